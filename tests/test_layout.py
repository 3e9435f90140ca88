"""The rules of the code layout that keep the worker, CLI and API free of Streamlit."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import exporter
from exporter.config import PROJECT_ROOT


def test_exporter_imports_without_streamlit() -> None:
    modules = [
        m.name
        for m in pkgutil.walk_packages(exporter.__path__, "exporter.")
        if not m.name.startswith(("exporter.ui", "exporter.store.migrations", "exporter.__main__"))
    ]
    assert "exporter.registry.query" in modules and "exporter.services" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('streamlit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "an exporter module outside exporter.ui imports Streamlit"


def test_pages_do_not_touch_sql_zip_dicom_or_the_queue() -> None:
    forbidden = {"sqlalchemy", "zipfile", "pydicom", "rq", "redis"}
    for page in [
        PROJECT_ROOT / "app.py",
        *Path(PROJECT_ROOT / "pages").glob("*.py"),
    ]:
        tree = ast.parse(page.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{page.name} imports {name}"
