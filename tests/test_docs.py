"""The documentation: generated tables up to date (scripts/gen_docs.py), every relative link
and anchor in README.md and docs/ leading somewhere, and the README a short front door that
links every page."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import PROJECT_ROOT
from tests import builders

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200


gen_docs = builders.gen_docs()


def test_the_generated_tables_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gen_docs.py", "--check"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_a_stale_table_fails_the_check_and_names_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    for page in gen_docs.GENERATED:
        shutil.copy(PROJECT_ROOT / page, tmp_path / page)
    settings = tmp_path / "docs/settings.md"
    fresh = settings.read_text(encoding="utf-8")
    settings.write_text(re.sub(r"\n\| `MAX_NESTING` [^\n]*", "", fresh), encoding="utf-8")

    assert gen_docs.main(["--check"], root=tmp_path) == 1
    assert settings.read_text(encoding="utf-8") != fresh, "--check must change nothing"
    message = capsys.readouterr().err
    assert message == (
        "docs/settings.md is out of date: run .venv/bin/python scripts/gen_docs.py\n"
    )

    assert gen_docs.main([], root=tmp_path) == 0
    assert settings.read_text(encoding="utf-8") == fresh
    assert gen_docs.main(["--check"], root=tmp_path) == 0


def test_a_page_without_markers_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\nno table here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="add the lines <!-- BEGIN TABLE"):
        gen_docs.update_doc(page, gen_docs.settings_table())


def test_every_setting_has_a_row() -> None:
    from exporter.config import Settings

    rows = gen_docs.settings_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [s["env"] for s in Settings.declared()]
    assert "| `DISK_RESERVE` | size | `1GiB` |" in gen_docs.settings_table()
    assert "| `SMTP_HOST` | text | (empty) |" in gen_docs.settings_table()


# --- links ------------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"(`+).+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _prose(text: str) -> str:
    """Markdown without code blocks and code spans, where brackets are not links."""
    return _CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target of a Markdown text (inline and reference-style), in order."""
    prose = _prose(text)
    return [m.group(1) for m in _LINK.finditer(prose)] + _REFERENCE.findall(prose)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped (not
    hyphens or underscores), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings; repeats get ``-1``, ``-2``... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(_FENCE.sub("", text)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_the_link_helpers() -> None:
    text = (
        "# Export Portal\n## The `metadata.json` file\n## Parts, cancel & retry\n## Parts\n"
        "## Parts\n```sh\n# not a heading [x](nowhere.md)\n```\n"
        "See [a](docs/a.md#b), ![img](pic.png), `[0](0020,000E)` and [c](https://x.org).\n"
        "[ref]: docs/ref.md\n"
    )
    assert links(text) == ["docs/a.md#b", "pic.png", "https://x.org", "docs/ref.md"]
    assert anchors(text) == {
        "export-portal",
        "the-metadatajson-file",
        "parts-cancel--retry",
        "parts",
        "parts-1",
    }
    assert slug("Downloading: HEAD, Range & part 0") == "downloading-head-range--part-0"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(PROJECT_ROOT.resolve())}")
        elif (
            anchor
            and dest.suffix == ".md"
            and anchor not in anchors(dest.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name} has broken links:\n" + "\n".join(broken)


def test_the_readme_is_a_front_door_to_every_page() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES, (
        f"README.md has {len(readme.splitlines())} lines: keep it to {README_MAX_LINES}, "
        "and move reference text into docs/"
    )
    linked = {target.partition("#")[0] for target in links(readme)}
    unlinked = [
        f"docs/{page.name}"
        for page in sorted((PROJECT_ROOT / "docs").glob("*.md"))
        if f"docs/{page.name}" not in linked
    ]
    assert not unlinked, f"README.md links no page {', '.join(unlinked)}: add it to its list"
