"""The patient tree widget, behind a small adapter (streamlit-tree-select is unmaintained:
this is the one place that knows it, so it can be swapped)."""

from __future__ import annotations

from typing import Any

import streamlit as st
from streamlit_tree_select import tree_select

from exporter.registry.query import EXPORTED_TAG, ProjectTree, TreePatient

FOLDER = "f:"
PATIENT = "p:"


def nodes(tree: ProjectTree, patients: list[TreePatient]) -> list[dict[str, Any]]:
    """Tree nodes: folders (values ``f:<path>``) holding patients (``p:<label>``)."""
    children: dict[str, list[dict[str, Any]]] = {"": []}
    for path in tree.folders:
        children.setdefault(path, [])
    for patient in patients:
        children.setdefault(patient.folder, []).append(
            {"label": patient.label, "value": PATIENT + patient.label}
        )
    # folders from the deepest up, so each one's children are complete when it is attached
    for path in sorted(children, key=lambda p: p.count("/"), reverse=True):
        if not path:
            continue
        parent = path.rpartition("/")[0]
        node = {
            "label": path.rpartition("/")[2],
            "value": FOLDER + path,
            "children": children[path],
        }
        if children[path]:
            children.setdefault(parent, []).insert(0, node)
    return children[""]


def visible_patients(
    tree: ProjectTree, search: str, tags: list[str], tag_mode: str, not_exported: bool = False
) -> list[TreePatient]:
    """The patients the tree shows: label contains ``search``; any/all of ``tags``; not
    tagged EXPORTED when asked."""
    needle = search.strip().lower()
    wanted = set(tags)
    shown = []
    for patient in tree.patients:
        if needle and needle not in patient.label.lower():
            continue
        if not_exported and EXPORTED_TAG in patient.tags:
            continue
        have = wanted & set(patient.tags)
        if wanted and (not have or (tag_mode == "all" and have != wanted)):
            continue
        shown.append(patient)
    return shown


def selection(checked: list[str], tree: ProjectTree) -> tuple[list[str], list[str]]:
    """(folders, patients) for the ticked leaves: a folder whose patients are all ticked
    (and visible) is sent as the folder, which keeps requests short for big cohorts."""
    ticked = {value[len(PATIENT) :] for value in checked if value.startswith(PATIENT)}
    by_folder: dict[str, set[str]] = {}
    for patient in tree.patients:
        for depth in range(patient.folder.count("/") + 1 if patient.folder else 0):
            prefix = "/".join(patient.folder.split("/")[: depth + 1])
            by_folder.setdefault(prefix, set()).add(patient.label)
    folders: list[str] = []
    covered: set[str] = set()
    for path in sorted(by_folder, key=lambda p: p.count("/")):
        members = by_folder[path]
        if members and members <= ticked and not any(path.startswith(f + "/") for f in folders):
            folders.append(path)
            covered |= members
    return folders, sorted(ticked - covered)


def patient_tree(
    tree: ProjectTree, patients: list[TreePatient], key: str, checked: list[str] | None = None
) -> list[str]:
    """Show the tree in a scrolling box; return the ticked leaf values."""
    with st.container(height=420, border=True):
        value = tree_select(
            nodes(tree, patients), check_model="leaf", checked=checked or [], key=key
        )
    checked = (value or {}).get("checked", []) if isinstance(value, dict) else []
    return [str(v) for v in checked]
