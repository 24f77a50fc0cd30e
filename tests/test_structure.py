"""Project rules that the code's import graph can check (docs/DESIGN.md, "Layers").

backend imports only downward: specs (with errors, settings, progress, registry), sources, models, embed,
relink, audit/probe, dp, runs, views, then cli; the dashboard (app.py, ui/, app_pages/) imports only ui,
backend.views, backend.specs, backend.runs and backend.errors, and is the only code that imports streamlit. No
import circle, no `_private` name imported from another package, no
sys.path edits, and late (function-level) imports only of modules that bring torch, open_clip, faiss,
opacus, sklearn or duckdb (to keep them off the dashboard's or the CLI's import path).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKEND = REPO / "backend"
LAYERS = (("errors", "settings", "progress", "registry", "specs", "distributed"), ("sources", "public_bank"), ("models",), ("embed",),
          ("relink",), ("audit", "probe"), ("dp",), ("runs",), ("views",), ("cli", "__main__"))
HEAVY = {"torch", "open_clip", "faiss", "opacus", "sklearn", "duckdb", "torchvision"}
DASHBOARD_IMPORTS = {"ui", "backend.views", "backend.specs", "backend.runs", "backend.errors"}
DASHBOARD = [REPO / "app.py", *sorted((REPO / "ui").glob("*.py")), *sorted((REPO / "app_pages").glob("*.py"))]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in BACKEND.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The backend module that `name` (a module or a module.attribute) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path) -> list[tuple[str, str, bool]]:
    """(imported module, imported attribute or '', inside a function) for every import statement."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, str, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, "", in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for a in child.names:
                    full = f"{child.module}.{a.name}"
                    out.append((full if full in MODULES else child.module, a.name, in_func))
            visit(child, nested)

    visit(tree, False)
    return out


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS and to docs/DESIGN.md")


def backend_edges(top_level_only: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        targets = {_resolve(m) for m, _, late in imports(path) if m.startswith("backend") and not (top_level_only and late)}
        edges[mod] = {t for t in targets if t and t != mod and t != "backend"}
    return edges


def heavy(module: str, seen: frozenset[str] = frozenset()) -> bool:
    """True when importing `module` imports a heavy library (at module level, transitively)."""
    seen = seen | {module}
    for m, _, late in imports(MODULES[module]):
        if late:
            continue
        if m.split(".")[0] in HEAVY:
            return True
        target = _resolve(m) if m.startswith("backend") else None
        if target and target not in seen and heavy(target, seen):
            return True
    parent = module.rpartition(".")[0]  # importing a submodule runs its package's __init__ first
    return bool(parent and parent in MODULES and parent != "backend" and parent not in seen and heavy(parent, seen))


def test_no_flat_prefix_modules_left() -> None:
    flat = [p.name for p in BACKEND.glob("*.py") if re.match(r"(relink|dp|synthetic)_", p.name)]
    assert flat == []


def test_backend_imports_only_downward_and_has_no_circle() -> None:
    wrong = sorted(f"{a} -> {b}" for a, bs in backend_edges(False).items() for b in bs
                   if a != "backend.__main__" and layer(b) > layer(a))
    assert wrong == []
    # no circle, late imports included
    edges = backend_edges(False)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def dfs(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and dfs(nxt, [*stack, nxt]):
                return True
        state[node] = 2
        return False

    for mod in sorted(edges):
        if state.get(mod) is None and dfs(mod, [mod]):
            break
    assert cycle == []


def test_late_imports_only_keep_heavy_libraries_off_the_import_path() -> None:
    wrong = []
    for mod, path in MODULES.items():
        for m, _, late in imports(path):
            if not late:
                continue
            target = _resolve(m) if m.startswith("backend") else None
            ok = m.split(".")[0] in HEAVY or (target is not None and heavy(target)) or not m.startswith("backend")
            if not ok:
                wrong.append(f"{mod}: {m}")
    assert sorted(set(wrong)) == []


def test_no_private_name_crosses_packages() -> None:
    def package(mod: str) -> str:
        return ".".join(mod.split(".")[:2])

    wrong = []
    for py in [*BACKEND.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*.py"),
               *DASHBOARD]:
        mod = module_name(py)
        for m, attr, _ in imports(py):
            if m.startswith("backend") and attr.startswith("_") and package(_resolve(m) or m) != package(mod):
                wrong.append(f"{mod}: {m}.{attr}")
    assert wrong == []


def test_dashboard_imports_only_ui_views_specs_runs_errors() -> None:
    """app.py, the ui package and the pages read the store through backend.views and launch specs through
    backend.runs; no source, setting or model code of their own."""
    wrong = []
    for py in DASHBOARD:
        for m, _, _ in imports(py):
            top = m.split(".")[0]
            if not ((REPO / f"{top}.py").exists() or (REPO / top / "__init__.py").exists()):
                continue  # the standard library and third-party packages (heavy ones: test_dashboard_does_no_ml_or_sql)
            if not any(m == allowed or m.startswith(allowed + ".") for allowed in DASHBOARD_IMPORTS):
                wrong.append(f"{py.relative_to(REPO)}: {m}")
    assert wrong == []


def test_nothing_edits_sys_path() -> None:
    offenders = [str(p.relative_to(REPO)) for d in ("tests", "bench", "backend", "app_pages")
                 for p in (REPO / d).rglob("*.py") if "sys.path" in p.read_text() and p.name != "test_structure.py"]
    assert offenders == []


def test_docstrings_cite_only_files_in_the_repository() -> None:
    cited = re.compile(r"\b((?:backend|docs|tests|bench|app_pages)/[\w/.-]+\.(?:py|md|json)|DESIGN\.md|INTERFACES\.md)")
    missing = []
    for py in [*BACKEND.rglob("*.py"), *DASHBOARD]:
        for ref in set(cited.findall(py.read_text())):
            path = REPO / ("docs/" + ref if "/" not in ref else ref)
            if not path.exists():
                missing.append(f"{py.relative_to(REPO)}: {ref}")
    assert missing == []


def test_backend_never_imports_streamlit() -> None:
    offenders = [m for m, p in MODULES.items() if any(i.split(".")[0] == "streamlit" for i, _, _ in imports(p))]
    assert offenders == []


def test_dashboard_does_no_ml_or_sql() -> None:
    offenders = {str(p.relative_to(REPO)): sorted({i.split(".")[0] for i, _, _ in imports(p)} & HEAVY)
                 for p in DASHBOARD}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_dashboard_imports_streamlit() -> None:
    """Outside app.py, ui/ and app_pages/ no code imports streamlit (tests/ drives the app through
    streamlit.testing)."""
    outside = [p for p in REPO.rglob("*.py") if p.relative_to(REPO).parts[0] not in
               {"app.py", "ui", "app_pages", "tests", "cache"} and not p.relative_to(REPO).parts[0].startswith(".")]
    offenders = [str(p.relative_to(REPO)) for p in outside
                 if any(i.split(".")[0] == "streamlit" for i, _, _ in imports(p))]
    assert outside and offenders == []


def test_dashboard_lists_the_registry_without_importing_torch() -> None:
    """The model list on every page comes from the torch-free registry, and it is the registry's list."""
    ui_modules = ", ".join(module_name(p) for p in DASHBOARD if p.parent.name == "ui")
    code = (f"import sys, json; from backend.views import catalog; import {ui_modules}; "
            "print(json.dumps([catalog.known_models(), sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(HEAVY - {'duckdb'})!r})]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    known, heavy_loaded = json.loads(out)
    assert heavy_loaded == []
    code = ("import json; from backend.models import list_models; "
            "print(json.dumps([[m.name, m.description, m.weights] for m in list_models()]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    registry = json.loads(out)
    assert list(known) == [name for name, _, _ in registry]
    assert all(desc in known[name] and weights in known[name] for name, desc, weights in registry)
