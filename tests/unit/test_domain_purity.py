"""The domain package is pure: its rules import no web framework, no database
driver, no server and nothing that does I/O, and no other layer of the package
(except, for type hints alone, the settings they are given). Read from the source,
so a new module or a new import is checked as soon as it is written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dispatch.domain

DOMAIN = Path(dispatch.domain.__file__).parent
MODULES = sorted(DOMAIN.glob("*.py"))
# Third-party and standard modules a pure rule may not use: frameworks, drivers,
# servers, and everything that touches files, sockets, processes or the clock's I/O.
FORBIDDEN = ("flask", "werkzeug", "psycopg", "psycopg_pool", "gunicorn", "requests",
             "httpx", "boto3", "sqlite3", "socket", "subprocess", "os", "io", "pathlib",
             "shutil", "tempfile", "http", "urllib.request", "logging", "threading",
             "multiprocessing", "select", "signal", "asyncio")
FORBIDDEN_CALLS = ("open", "print", "input", "exec", "eval", "__import__")


def imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Every module imported at run time (``if TYPE_CHECKING:`` blocks excepted)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def problems(source: str) -> list[str]:
    tree = ast.parse(source)
    found = []
    for line, module in imports(tree):
        if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN):
            found.append(f"line {line}: imports {module}")
        elif module.startswith("dispatch") and not module.startswith("dispatch.domain"):
            found.append(f"line {line}: imports {module}, outside the domain")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in FORBIDDEN_CALLS:
            found.append(f"line {node.lineno}: calls {node.func.id}()")  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.stem)
def test_a_domain_module_imports_no_framework_driver_or_io(module: Path) -> None:
    assert [] == problems(module.read_text())


def test_the_check_finds_what_it_forbids() -> None:
    """What the check above would say of a module that broke the rule."""
    source = ("import os\nfrom flask import Flask\nfrom dispatch.service.ports import X\n"
              "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
              "    from dispatch.config.settings import Settings\n"
              "def f():\n    import psycopg\n    return open('x')\n")
    assert ["line 1: imports os", "line 2: imports flask",
            "line 3: imports dispatch.service.ports, outside the domain",
            "line 8: imports psycopg", "line 9: calls open()"] == problems(source)
    assert len(MODULES) >= 10  # the glob found the package
