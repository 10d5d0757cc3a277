"""The size limits of the style rules: no module over 600 lines, no function over 100.

Big modules and long functions are where jobs get tangled and reviews miss things;
this keeps the limits from eroding one commit at a time.  Tests are exempt (a
test module groups the cases of one subject); everything else in the packages is
walked, so a new file is covered without being listed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("brain", "rlds", "edge_agent", "cloud_jobs", "common")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _functions(tree: ast.AST) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its dotted name inside the module."""
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((prefix + child.name, child))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def _function_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    # From the first decorator (or the def) to the last line of the body.
    start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    end = fn.end_lineno or fn.lineno
    return end - start + 1


def oversized() -> list[str]:
    problems = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{rel}: {lines} lines (limit {MAX_MODULE_LINES})")
        for name, fn in _functions(ast.parse(source, filename=rel)):
            n = _function_lines(fn)
            if n > MAX_FUNCTION_LINES:
                problems.append(f"{rel}:{fn.lineno} {name}: {n} lines (limit {MAX_FUNCTION_LINES})")
    return problems


def test_modules_and_functions_within_size_limits() -> None:
    problems = oversized()
    assert not problems, "too big (split along the jobs):\n" + "\n".join(problems)


def test_walk_sees_every_package() -> None:
    # A renamed or moved package must not silently drop out of the check.
    seen = {p.relative_to(ROOT).parts[0] for p in _modules()}
    assert seen == set(PACKAGES)


def test_counts_nested_functions_and_methods(tmp_path: Path) -> None:
    src = "class A:\n    def m(self):\n        def inner():\n" + "            x = 1\n" * 120
    names = {name: _function_lines(fn) for name, fn in _functions(ast.parse(src))}
    assert names == {"A.m": 122, "A.m.inner": 121}
