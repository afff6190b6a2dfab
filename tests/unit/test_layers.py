"""One installed name and one direction of dependencies, read from the source itself.

The arrows run producer -> core <- worker and everything -> config; config imports
nothing of ours, the worker nothing of the producer's, and no module imports its way
back to itself. (ruff's banned-api refuses bare `config`/`core`/`producer`/`worker`.)
"""

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"
]
ALLOWED = {
    "config": {"config"},
    "core": {"core", "config"},
    "producer": {"producer", "core", "config"},
    "worker": {"worker", "core", "config"},
    "root": {"root", "core", "config", "producer"},
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            modules.setdefault(name, path)  # emailq.worker lives in worker/, not emailq/worker
    return modules


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Our modules that ``path`` imports anywhere in it, functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n == "emailq" or n.startswith("emailq."))
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def test_every_folder_installs_under_emailq():
    assert set(PACKAGE_DIRS) == {
        "emailq", "emailq.config", "emailq.core", "emailq.producer", "emailq.worker",
    }  # fmt: skip
    assert all(name == "emailq" or name.startswith("emailq.") for name in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    wrong = {m for m in GRAPH[module] if _layer(m) not in ALLOWED[_layer(module)]}
    assert not wrong, f"{module} ({_layer(module)}) must not import {sorted(wrong)}"


def test_no_module_imports_its_way_back_to_itself():
    cycles = [c for c in _strongly_connected(GRAPH) if len(c) > 1]
    assert cycles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_an_application_that_enqueues_loads_no_sender_database_or_bare_module(tmp_path):
    # Given an application directory with its own config, worker and producer modules
    for name in ("config", "worker", "producer", "core"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the application module')\n")
    probe = textwrap.dedent(
        """
        import sys
        import emailq
        from emailq import InvalidEmail, enqueue_bulk, enqueue_email
        loaded = sorted(sys.modules)
        print("\\n".join(loaded))
        """
    )

    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()

    assert "emailq.producer" in out
    bare = {"config", "worker", "producer", "core"} & set(out)
    heavy = [m for m in out if m.startswith(("emailq.worker", "sqlalchemy", "aiosmtpd"))]
    assert not bare and not heavy, (bare, heavy)
    assert "smtplib" not in out
