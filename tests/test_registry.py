"""Selection and estimate: folders, patients, tags, modalities, kinds, and permissions."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter import schemas, services
from exporter.access.accounts import principal_for
from exporter.config import Settings
from exporter.errors import InvalidSelection, NotFound
from exporter.registry.query import select_files
from exporter.schemas import Selection
from exporter.store import db
from tests.builders import small_tree

ME = "rita@lab.example"


@pytest.fixture
def registered(settings: Settings, tmp_path: Path) -> Settings:
    services.add_project(settings, "proj")
    services.add_project(settings, "other")
    services.register(settings, "proj", small_tree(settings.data_root / "study"))
    small_tree(settings.data_root / "elsewhere")
    services.register(settings, "other", settings.data_root / "elsewhere")
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("patient,tags\nP001,baseline;class-II\nP002,baseline\nP003,class-II\n")
    services.register(settings, "proj", settings.data_root / "study", csv_path)
    services.add_user(settings, ME, "proj", "researcher")
    services.add_user(settings, "olga@lab.example", "other", "researcher")
    return settings


def est(settings: Settings, user: str = ME, **sel: object) -> services.Estimate:
    return services.estimate(settings, user, "proj", schemas.parse_selection(**sel))  # type: ignore[arg-type]


def test_folder_selection_includes_subfolders(registered: Settings) -> None:
    e = est(registered, folders=["site-a"], modalities=["cbct"])
    assert (e.patients_selected, e.patient_count, e.file_count) == (2, 2, 8)
    cbct = next(m for m in e.by_modality if m.key == "cbct")
    assert cbct.selected and cbct.files == 8
    photo = next(m for m in e.by_modality if m.key == "intraoral-photo")
    assert (photo.selected, photo.patients, photo.files, photo.bytes) == (False, 2, 2, 604)


def test_whole_project_and_kinds(registered: Settings) -> None:
    every = est(registered, folders=["/"], modalities=["cbct", "ios", "intraoral-photo"])
    assert (every.patients_selected, every.file_count) == (3, 20)
    raw_only = est(registered, folders=["/"], modalities=["cbct"], kinds=["raw"])
    assert raw_only.file_count == 9
    processed = est(registered, folders=["/"], modalities=["cbct"], kinds=["processed"])
    assert (processed.file_count, processed.total_bytes) == (3, 3 * 502)


def test_patients_and_folders_combine_as_union(registered: Settings) -> None:
    e = est(registered, folders=["site-b"], patients=["P001"], modalities=["ios"])
    assert (e.patients_selected, e.file_count, e.total_bytes) == (2, 4, 4 * 884)


def test_patient_count_counts_only_patients_with_chosen_files(registered: Settings) -> None:
    e = est(registered, folders=["/"], modalities=["intraoral-photo"])
    assert (e.patients_selected, e.patient_count) == (3, 2)


def test_tags_any_and_all(registered: Settings) -> None:
    any_ = est(registered, tags=["baseline", "class-II"], modalities=["ios"])
    all_ = est(registered, tags=["baseline", "class-II"], tag_mode="all", modalities=["ios"])
    assert any_.patients_selected == 3
    assert all_.patients_selected == 1
    in_folder = est(registered, folders=["site-a"], tags=["class-II"], modalities=["ios"])
    assert in_folder.patients_selected == 1


def test_select_files_lists_exactly_the_estimated_files(registered: Settings) -> None:
    sel = schemas.parse_selection(folders=["site-a/study-1"], modalities=["cbct", "ios"])
    with db.session_scope(registered) as session:
        user = principal_for(session, ME)
        files = select_files(session, user, "proj", sel)
    e = services.estimate(registered, ME, "proj", sel)
    assert len(files) == e.file_count == 12
    assert sum(f.size for f in files) == e.total_bytes
    assert [f.patient_label for f in files][:1] == ["P001"]
    assert {f.path.split("/")[0] for f in files} == {"study"}


@pytest.mark.parametrize(
    ("sel", "message"),
    [
        ({"folders": ["site-z"], "modalities": ["cbct"]}, "No folder 'site-z' in project 'proj'"),
        ({"patients": ["P404"], "modalities": ["cbct"]}, "No patient 'P404' in project 'proj'"),
        ({"tags": ["nope"], "modalities": ["cbct"]}, "No tag 'nope' in project 'proj'"),
        ({"folders": ["/"], "modalities": ["mri"]}, "Modality 'mri' is not enabled in project"),
        ({"folders": ["/"], "kinds": ["cooked"]}, "use 'raw' and/or 'processed'"),
        ({"modalities": ["cbct"]}, "Nothing selected: tick folders or patients"),
        ({"folders": ["/"], "tag_mode": "some"}, "Tag mode 'some' is not known"),
    ],
)
def test_bad_selections_say_what_to_change(registered: Settings, sel: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidSelection, match=message):
        est(registered, **sel)


def test_members_of_other_projects_see_nothing(registered: Settings) -> None:
    with pytest.raises(NotFound, match="No project 'proj' that you can access"):
        est(registered, user="olga@lab.example", folders=["/"], modalities=["cbct"])
    with pytest.raises(NotFound, match=r"No portal account for 'nobody@lab\.example'"):
        est(registered, user="nobody@lab.example", folders=["/"])
    # the other project's patient labels are the same, but never mix in
    other = services.estimate(
        registered, "olga@lab.example", "other", Selection(folders=("",), modalities=("ios",))
    )
    mine = est(registered, folders=["/"], modalities=["ios"])
    assert other.patients_selected == mine.patients_selected == 3
    assert services.overview(registered, "olga@lab.example")[0].slug == "other"
    assert [p.slug for p in services.overview(registered, ME)] == ["proj"]


def test_admins_see_every_project(registered: Settings) -> None:
    services.add_user(registered, "root@lab.example", "proj", "data_manager", is_admin=True)
    slugs = [p.slug for p in services.overview(registered, "root@lab.example")]
    assert sorted(slugs) == ["other", "proj"]
    o = services.overview(registered, "root@lab.example")
    assert all(p.role == "data_manager" and p.files == 20 for p in o)


def test_labels_are_selected_without_surrounding_spaces(registered: Settings) -> None:
    """The same rule as registration's (which refuses labels with them): ' P003 ' is P003."""
    e = est(registered, patients=[" P003 ", "P003"], modalities=["ios"])
    assert (e.patients_selected, e.file_count) == (1, 2)


@pytest.mark.parametrize("label", ["P\udcff", "P\x00", "P" * 2000])
def test_selections_that_cannot_be_text_never_reach_the_database(
    registered: Settings, label: str
) -> None:
    with pytest.raises(InvalidSelection, match="'patients' entry 1"):
        est(registered, patients=[label], modalities=["ios"])
