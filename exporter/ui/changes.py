"""How DICOM header changes are tabled on the pages (preview and export change log)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import streamlit as st

from exporter.schemas import ChangeRow


def show(rows: Iterable[tuple[dict[str, Any], ChangeRow]], with_old: bool) -> None:
    """A table of changes: what identifies the row, then field, action, reason, new value and
    (for data managers) old value. A removed field shows "(removed)" as its new value."""
    table = []
    for lead, c in rows:
        row = {
            **lead,
            "Field": c.keyword,
            "Tag": c.tag,
            "Action": c.action,
            "Reason": c.reason,
            "New value": "(removed)" if c.new_value is None else c.new_value,
        }
        files = getattr(c, "files", None)
        if files is not None:
            row["Files"] = files
        if with_old:
            row["Old value"] = c.old_value or ""
        table.append(row)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(table), 600),
        column_config={
            "New value": st.column_config.TextColumn(width="medium"),
            "Old value": st.column_config.TextColumn(width="medium"),
        },
    )
