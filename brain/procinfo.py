"""What the daemon's own process holds: resident memory, threads, imported packages.

Reported in `continuon stats` (``process``) so that a lean daemon is checked on
the running process itself (tests/test_lean_daemon.py) rather than trusted: a
plug-in or a stray top-level import that drags in ``cloud_jobs`` or torch shows
up here.  Standard-library modules are left out of ``packages``.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import psutil

#: glibc's M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3
#: Frames (640x480x3 = 900 KiB) and render temporaries are above this, so they
#: are mapped on allocation and unmapped on free.
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_large_buffers_to_the_os() -> bool:
    """Pin glibc's mmap threshold so that freed frame-sized buffers leave the process.

    By default glibc raises the threshold after the first large free (up to
    32 MiB), after which camera frames and render temporaries come from the
    per-thread arenas and stay resident once freed: about 40 MB of the
    daemon's RSS here (bench/daemon_start.py).  Pinning it costs a few page
    faults per frame.  False where the C library has no ``mallopt`` (musl,
    macOS): nothing changes there.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def loaded_packages() -> list[str]:
    """Sorted top-level names of the non-stdlib modules imported so far."""
    stdlib = sys.stdlib_module_names
    tops = {name.partition(".")[0] for name in list(sys.modules)}
    return sorted(t for t in tops if t not in stdlib and not t.startswith("_"))


def process_info() -> dict[str, Any]:
    proc = psutil.Process()
    return {
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "threads": proc.num_threads(),
        "modules": len(sys.modules),
        "packages": loaded_packages(),
    }
