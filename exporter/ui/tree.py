"""The patient tree widget, behind a small adapter (streamlit-tree-select is unmaintained:
this is the one place that knows it, so it can be swapped)."""

from __future__ import annotations

import re
from typing import Any

import streamlit as st
from streamlit_tree_select import tree_select

from exporter.registry.query import EXPORTED_TAG, ProjectTree, TreePatient

FOLDER = "f:"
PATIENT = "p:"


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that reads numbers as numbers: site-a before site-b, cohort-2 before
    cohort-10, P9 before P10."""
    return tuple(
        (0, int(part)) if part.isascii() and part.isdigit() else (1, part.lower())
        for part in re.split(r"([0-9]+)", text)
        if part
    )


def nodes(tree: ProjectTree, patients: list[TreePatient]) -> list[dict[str, Any]]:
    """Tree nodes: folders (values ``f:<path>``) holding patients (``p:<label>``), each level
    folders first, in natural order."""
    children: dict[str, list[dict[str, Any]]] = {"": []}
    for path in tree.folders:
        children.setdefault(path, [])
    for patient in sorted(patients, key=lambda p: natural_key(p.label)):
        children.setdefault(patient.folder, []).append(
            {"label": patient.label, "value": PATIENT + patient.label}
        )
    # folders from the deepest up, so each one's children are complete when it is attached
    folders: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(children, key=lambda p: p.count("/"), reverse=True):
        if not path:
            continue
        parent = path.rpartition("/")[0]
        kids = sorted(folders.pop(path, []), key=lambda n: natural_key(n["label"]))
        node = {
            "label": path.rpartition("/")[2],
            "value": FOLDER + path,
            "children": kids + children[path],
        }
        if node["children"]:
            folders.setdefault(parent, []).append(node)
    top = sorted(folders.pop("", []), key=lambda n: natural_key(n["label"]))
    return top + children[""]


def open_folders(patients: list[TreePatient]) -> list[str]:
    """Every folder that holds one of these patients (and its parents), to show them open."""
    opened: set[str] = set()
    for patient in patients:
        parts = patient.folder.split("/") if patient.folder else []
        for depth in range(1, len(parts) + 1):
            opened.add(FOLDER + "/".join(parts[:depth]))
    return sorted(opened)


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


def ticked_leaves(tree: ProjectTree, folders: list[str], patients: list[str]) -> list[str]:
    """The tree values to tick for a stored selection: the patients named, and every patient
    in or below each folder ("" or "/": the whole project). The tree ticks leaves only, so
    a folder value alone would tick nothing."""
    wanted = {f.strip("/") for f in folders}
    labels = set(patients)
    for patient in tree.patients:
        if "" in wanted or any(
            patient.folder == f or patient.folder.startswith(f + "/") for f in wanted
        ):
            labels.add(patient.label)
    return [PATIENT + label for label in sorted(labels)]


def patient_tree(
    tree: ProjectTree,
    patients: list[TreePatient],
    key: str,
    checked: list[str] | None = None,
    expanded: list[str] | None = None,
) -> list[str]:
    """Show the tree in a scrolling box (``expanded``: folders shown open); return the
    ticked leaf values."""
    with st.container(height=420, border=True):
        value = tree_select(
            nodes(tree, patients),
            check_model="leaf",
            checked=checked or [],
            expanded=expanded or [],
            key=key,
        )
    checked = (value or {}).get("checked", []) if isinstance(value, dict) else []
    return [str(v) for v in checked]
