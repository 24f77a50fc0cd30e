"""Project rules that a grep can check: backend never imports streamlit; pages never compute."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_][\w.]*)", re.M)


def _imports(path: Path) -> set[str]:
    return {m.split(".")[0] for m in IMPORT.findall(path.read_text())}


def test_backend_never_imports_streamlit() -> None:
    offenders = [p.name for p in (REPO / "backend").rglob("*.py") if "streamlit" in _imports(p)]
    assert offenders == []


def test_pages_do_no_ml_or_sql() -> None:
    banned = {"torch", "open_clip", "opacus", "duckdb", "faiss", "sklearn"}
    offenders = {p.name: sorted(_imports(p) & banned) for p in (REPO / "pages").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_ui_and_pages_import_streamlit() -> None:
    allowed = {"app.py", "ui.py"}
    offenders = [
        str(p.relative_to(REPO))
        for p in REPO.glob("*.py")
        if p.name not in allowed and "streamlit" in _imports(p)
    ]
    assert offenders == []



def test_dashboard_lists_the_registry_without_importing_torch() -> None:
    """The model list on every page comes from the torch-free catalog, and it is the registry's list."""
    code = ("import sys, json; from backend import dashboard; "
            "print(json.dumps([dashboard.known_models(), [m for m in ('torch', 'open_clip') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    known, heavy = json.loads(out)
    assert heavy == []
    # the registry as a fresh process sees it (other tests register tiny models in this one)
    code = ("import json; from backend.models import list_models; "
            "print(json.dumps([[m.name, m.description, m.weights] for m in list_models()]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    registry = json.loads(out)
    assert list(known) == [name for name, _, _ in registry]
    assert all(desc in known[name] and weights in known[name] for name, desc, weights in registry)
