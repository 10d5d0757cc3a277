"""Suite-wide checks that keep the test lanes honest (see "Test lanes" in docs/testing.md).

Shared helpers are plain modules imported as ``tests.<module>``: ``tests.waiting`` (polling),
``tests.daemon_helpers`` (the in-process daemon on the sim), ``tests.rlds_helpers`` and the
others beside this file. Two rules are checked after collection, because breaking either
fails quietly otherwise:

* a module of ``tests/`` imported under a second name (``rlds_helpers`` beside
  ``tests.rlds_helpers``) is a second copy with its own state;
* a test module holding torch at module level must carry the ``torch`` marker, or the
  torch-free lanes (``-m "not torch"``, the robot's own environment) would import it.

A whole-suite run of the fast lane also fails if it never imported one of our packages: the lane
is the one every edit runs, so a package it does not touch is a package nobody tests. Under
pytest-xdist (``make test-fast`` runs on a worker per core) each worker sends the modules it
loaded home and the controller checks their union; ``tests.parallel`` shares the cores among the
workers and runs ``timing`` tests alone.

A module whose own ``pytestmark`` already rules it out of the ``-m`` expression is not imported
at all: deselecting its tests after import would still pay for TensorFlow, peft or litert-torch
(tens of seconds of the fast lane's minute).
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.expression import Expression

from tests import parallel
from tests.emulation import EMULATED, SLOWDOWN

TESTS = Path(__file__).resolve().parent
# Stand-ins for third-party libraries, imported under those libraries' names on purpose.
FAKE_LIBS = TESTS / "fakes" / "site"


def _module_marks(path: Path) -> set[str]:
    """Names in a module's ``pytestmark = pytest.mark.x`` or ``[pytest.mark.x, ...]``."""
    tree = ast.parse(path.read_bytes(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            value = node.value
            elts = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
            marks = set()
            for elt in elts:
                if isinstance(elt, ast.Call):
                    elt = elt.func
                mark = isinstance(elt, ast.Attribute) and isinstance(elt.value, ast.Attribute)
                if mark and elt.value.attr == "mark":
                    marks.add(elt.attr)
            return marks
    return set()


def _ruled_out(expr: str, marks: set[str]) -> bool:
    """True if ``expr`` is false for every test that carries at least ``marks``."""
    if "(" in expr and "=" in expr:
        return False  # keyword matching on marker arguments: leave it to pytest
    names = set(re.findall(r"[\w:+\-.\[\]\\/]+", expr)) - {"and", "or", "not"}
    free = sorted(names - marks)
    if len(free) > 8:
        return False
    compiled = Expression.compile(expr)
    for values in itertools.product((False, True), repeat=len(free)):
        present = frozenset(marks | {name for name, on in zip(free, values, strict=True) if on})
        if compiled.evaluate(present.__contains__):
            return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    expr = config.getoption("markexpr")
    name = collection_path.name
    if not expr or not (name.startswith("test_") and name.endswith(".py")):
        return None
    marks = _module_marks(collection_path)
    return True if marks and _ruled_out(expr, marks) else None


def _stray_test_modules() -> list[str]:
    strays = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or name == "tests" or name.startswith("tests."):
            continue
        path = Path(file).resolve()
        if path.is_relative_to(TESTS) and not path.is_relative_to(FAKE_LIBS):
            strays.append(f"{name} ({path.relative_to(TESTS.parent)})")
    return sorted(strays)


def _holds_torch(module: types.ModuleType | None) -> bool:
    if module is None:
        return False
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else ""
        if name == "torch" or name.startswith("torch."):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    strays = _stray_test_modules()
    if strays:
        raise pytest.UsageError(
            "test helpers imported outside the tests package (import them as "
            f"`from tests.<module> import ...`): {', '.join(strays)}"
        )
    unmarked = sorted(
        {
            item.path.name
            for item in items
            if isinstance(item, pytest.Function)
            and item.get_closest_marker("torch") is None
            and _holds_torch(item.module)
        }
    )
    if unmarked:
        raise pytest.UsageError(
            f"these test modules import torch but are not marked `torch`: {', '.join(unmarked)}"
            " (add `pytestmark = pytest.mark.torch`)"
        )


def pytest_configure(config: pytest.Config) -> None:
    parallel.register(config)


def pytest_report_header(config: pytest.Config) -> str | None:
    if EMULATED:
        return f"CONTINUON_EMULATED=1: @pytest.mark.timing bounds scaled x{SLOWDOWN:g}"
    return None


# What `make test-fast` must touch, and its marker expression (Makefile FAST_LANE).
PACKAGES = ("brain", "rlds", "edge_agent", "cloud_jobs", "common")
FAST_LANE = "not slow and not integration"
# Under pytest-xdist the tests run in worker processes: each sends the names of our modules it
# loaded home in its workeroutput under this key, and the controller counts their union.
WORKER_MODULES = "continuon_modules"
_worker_modules = pytest.StashKey[set[str]]()


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _ours(name: str) -> bool:
    return any(_in(name, p) for p in PACKAGES)


def _loaded_modules(config: pytest.Config) -> set[str]:
    here = {m for m in list(sys.modules) if _ours(m)}
    return here | config.stash.get(_worker_modules, set())


def _loaded(modules: set[str], package: str) -> int:
    return sum(1 for m in modules if _in(m, package))


def _whole_fast_lane(config: pytest.Config) -> bool:
    paths = [Path(a.split("::")[0]).resolve() for a in config.args]
    return config.getoption("markexpr") == FAST_LANE and all(p == TESTS for p in paths)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Controller side of pytest-xdist: a worker finished; keep the modules it loaded."""
    names = getattr(node, "workeroutput", {}).get(WORKER_MODULES, [])
    node.config.stash.setdefault(_worker_modules, set()).update(names)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    modules = _loaded_modules(config)
    counts = ", ".join(f"{p} {_loaded(modules, p)}" for p in PACKAGES)
    terminalreporter.write_line(f"modules of our packages loaded in this run: {counts}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: report home, the controller decides
        workeroutput[WORKER_MODULES] = sorted(_loaded_modules(session.config))
        return
    if exitstatus != 0 or not _whole_fast_lane(session.config):
        return
    modules = _loaded_modules(session.config)
    missing = [p for p in PACKAGES if _loaded(modules, p) == 0]
    if missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"the fast lane never imported: {', '.join(missing)}", red=True)
