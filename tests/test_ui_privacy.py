"""The Project privacy page: data managers change what pseudonymised exports keep; others
read it. The service layer enforces the same (tests/test_privacy.py)."""

from __future__ import annotations

from exporter import services
from exporter.config import Settings
from tests.test_ui_curation import MANAGER, RESEARCHER, button, open_page


def test_a_data_manager_changes_the_policy_and_a_researcher_only_reads_it(
    ui_portal: Settings,
) -> None:
    portal = ui_portal
    at = open_page("privacy.py", MANAGER)
    assert not at.exception
    uids = next(t for t in at.toggle if t.label == "Keep UIDs")
    assert not uids.value and not uids.disabled
    assert next(t for t in at.toggle if t.label == "Keep dates as they are").value, "demo policy"
    assert button(at, "Save").disabled, "nothing changed yet"
    uids.set_value(True).run()
    at.text_input[0].set_value("0009,DEMO VENDOR,10").run()
    button(at, "Save").click().run()
    assert not at.exception and not at.error
    policy = services.project_privacy(portal, MANAGER, "demo").policy
    assert policy.retain_uids and [t.text() for t in policy.kept_private] == ["0009,DEMO VENDOR,10"]
    at.text_input[0].set_value("0010,NOT PRIVATE,10").run()
    button(at, "Save").click().run()
    assert any("GROUP,CREATOR,ELEMENT" in e.value for e in at.error), "says what fits"

    at = open_page("privacy.py", RESEARCHER)
    assert not at.exception
    assert all(t.disabled for t in at.toggle)
    assert any("Only the project's data managers" in i.value for i in at.info)
    assert not [b for b in at.button if b.label == "Save"] and not at.text_input
    at = open_page("new_export.py", RESEARCHER)
    captions = " ".join(c.value for c in at.caption)
    assert "keep: full dates, UIDs, patient characteristics" in captions
    assert "1 reviewed private tag(s)" in captions
