"""The house rules of `core/` (README, Development): every module imports, no import cycle (function-local
imports count, so a cycle cannot hide inside a function), none between its packages either (core.models as
one unit beside core.explain, ...), `core.io` is a leaf, and no Streamlit anywhere; the product (core/,
dashboard/, app.py) imports neither the test harness nor, from the dashboard, the trainer; and its docstrings,
comments and config comments quote no measured retrieval result (those go stale: they live in benchmarks/)."""
import ast
import importlib
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def modules(root: Path) -> tuple[dict[str, Path], set[str]]:
    """{dotted name: file} of every module under root/core, and which of them are packages."""
    mods, packages = {}, set()
    for path in sorted((root / "core").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            packages.add(".".join(parts))
        mods[".".join(parts)] = path
    return mods, packages


def imported_names(name: str, path: Path, is_package: bool) -> set[str]:
    """Every module name an `import` anywhere in the file (top level or inside a function) may load."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> core modules it imports. Edges into a package's __init__ are left out: Python runs a
    package's __init__ before any of its modules, so those loops are how packages work, not cycles."""
    mods, packages = modules(root)
    return {m: {n for n in imported_names(m, p, m in packages) if n in mods and n != m and n not in packages}
            for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def connect(start):
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1
        stack.append(start); on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_core_has_no_import_cycle():
    graph = import_graph(REPO)
    assert len(graph) > 20                                        # the walk saw the real tree
    assert cycles(graph) == [], "core import cycle(s): " + "; ".join(" <-> ".join(c) for c in cycles(graph))


@pytest.mark.parametrize("where", ["top", "function"])
def test_a_cycle_added_on_purpose_is_found(tmp_path, where):
    """The check can fail: core.io importing core.config (which imports core.io) closes a loop, also when
    the import hides inside a function."""
    shutil.copytree(REPO / "core", tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    line = "from core.config import RunConfig\n" if where == "top" else \
        "\n\ndef _late():\n    from core.config import RunConfig\n    return RunConfig\n"
    io_file = tmp_path / "core" / "io.py"
    io_file.write_text(io_file.read_text() + line)
    assert ["core.config", "core.io"] in cycles(import_graph(tmp_path))


def unit(name: str) -> str:
    """The part of core a module belongs to: its sub-package (core.models.heads.gsp -> core.models), or itself
    for a top-level module (core.explain)."""
    return ".".join(name.split(".")[:2])


def package_graph(root: Path) -> dict[str, set[str]]:
    """unit -> the other units its modules import. A loop here is a loop between packages even when no two
    modules import each other (core.models.blocks.csa -> core.explain -> core.models.mode was one)."""
    mods, packages = modules(root)
    units = {unit(m) for m in mods if m != "core"}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for m, p in mods.items():
        if m == "core":
            continue
        for name in imported_names(m, p, m in packages):
            if name.startswith("core.") and unit(name) in units and unit(name) != unit(m):
                graph[unit(m)].add(unit(name))
    return graph


def test_core_packages_import_each_other_in_one_direction():
    graph = package_graph(REPO)
    assert "core.models" in graph and "core.explain" in graph          # the walk saw the real tree
    assert cycles(graph) == [], "loop(s) between core's packages: " + "; ".join(" <-> ".join(c) for c in cycles(graph))


def test_a_package_loop_added_on_purpose_is_found(tmp_path):
    """No two modules import each other, yet core.models and core.explain would: the package check sees it."""
    shutil.copytree(REPO / "core", tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    explain = tmp_path / "core" / "explain.py"
    explain.write_text(explain.read_text() + "\n\ndef _late():\n    from core.models.backbones import Backbone\n")
    assert cycles(import_graph(tmp_path)) == []
    assert ["core.explain", "core.models"] in cycles(package_graph(tmp_path))


def test_io_is_a_leaf():
    assert import_graph(REPO)["core.io"] == set()


def test_no_core_module_imports_streamlit():
    mods, packages = modules(REPO)
    offenders = [m for m, p in mods.items()
                 if any(n.split(".")[0] == "streamlit" for n in imported_names(m, p, m in packages))]
    assert offenders == []


def test_every_core_module_imports_without_streamlit():
    """Every module imports (in a fresh interpreter, as a user's script would) and none pulls in Streamlit
    indirectly."""
    mods, _ = modules(REPO)
    names = sorted(m for m in mods if m != "core.__main__")
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "assert 'streamlit' not in sys.modules, 'core pulled in streamlit'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    importlib.import_module("core.__main__")                      # the CLI module imports too (runs nothing)


def product_imports(root: Path) -> dict[str, set[str]]:
    """file -> every module name its imports (anywhere in the file) may load, for core/, dashboard/ and app.py."""
    files = [*sorted((root / "core").rglob("*.py")), *sorted((root / "dashboard").rglob("*.py")), root / "app.py"]
    out = {}
    for path in files:
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        out[str(path.relative_to(root))] = imported_names(name, path, path.name == "__init__.py")
    return out


def test_the_product_imports_no_test_harness_and_the_dashboard_no_trainer():
    imports = product_imports(REPO)
    assert "dashboard/ui.py" in imports and "app.py" in imports            # the walk saw the real tree
    harness = {f: sorted(n for n in names if n.split(".")[0] in ("tests", "dashboard_testing", "heads_testing",
                                                                 "pytest", "playwright"))
               for f, names in imports.items()}
    assert {f: n for f, n in harness.items() if n} == {}
    trainer = [f for f, names in imports.items() if not f.startswith("core/") and "core.train" in names]
    assert trainer == [], "the dashboard trains only through `python -m core train` in a job"


# a retrieval metric followed by a value: "R@1 0.856", "MAP@R: 0.589", "recall@1 = .93" (not "R@1 ≥ 0.85"-style
# targets, which say what a check asks for, nor parameters such as "margin 0.5")
MEASURED = re.compile(r"(R@\d|MAP@R|NMI|recall@\d|R-?precision)\s*(=|:)?\s*\d?\.\d{2}", re.I)


def quoted_results(root: Path) -> list[str]:
    """'file:line: text' of every docstring or comment of core/, dashboard/ and app.py, and every comment of
    configs/*.yaml, that quotes a measured retrieval result."""
    found = []
    for path in [*sorted((root / "core").rglob("*.py")), *sorted((root / "dashboard").rglob("*.py")), root / "app.py"]:
        source = path.read_text()
        texts = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    texts.append((node.body[0].lineno, doc))
        found += [f"{path.relative_to(root)}:{line}: {MEASURED.search(text)[0]}" for line, text in texts
                  if MEASURED.search(text)]
    for path in sorted((root / "configs").glob("*.yaml")):
        for line, text in enumerate(path.read_text().splitlines(), 1):
            comment = text.partition("#")[2]
            if MEASURED.search(comment):
                found.append(f"{path.relative_to(root)}:{line}: {MEASURED.search(comment)[0]}")
    return found


def test_no_measured_result_in_docstrings_comments_or_configs(tmp_path):
    assert quoted_results(REPO) == []
    (tmp_path / "core").mkdir()
    (tmp_path / "dashboard").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "app.py").write_text('"""The app."""\n')
    (tmp_path / "core" / "head.py").write_text('"""A head.\n\nOn shapes it reaches MAP@R 0.589."""\nx = 1  # R@1: .93\n')
    (tmp_path / "configs" / "run.yaml").write_text("# shipped run: test R@1 0.856\nlr: 0.001  # margin 0.5\n")
    assert [f.split(": ")[0] for f in quoted_results(tmp_path)] == ["core/head.py:4", "core/head.py:1",
                                                                    "configs/run.yaml:1"]
