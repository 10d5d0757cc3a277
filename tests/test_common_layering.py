"""common/ is the bottom of the dependency graph: each of its modules loads on its own.

import-linter checks the import statements; this checks what really happens when a fresh
interpreter imports each module of ``common`` (import-time side effects, plugins, lazy imports
run at module level): none of our feature packages may come along.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import common

OURS = ("brain", "edge_agent", "rlds", "cloud_jobs")


def test_every_common_module_imports_alone_without_a_feature_package():
    names = ["common"] + [f"common.{m.name}" for m in pkgutil.iter_modules(common.__path__)]
    code = (
        "import importlib, json, sys\n"
        f"ours = {OURS!r}\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    out[name] = sorted(m for m in sys.modules if m.split('.')[0] in ours)\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    assert set(loaded) == set(names)
    assert all(mods == [] for mods in loaded.values()), loaded
