"""Suite-wide hooks."""

from __future__ import annotations

import pytest

from tests.emulation import EMULATED, SLOWDOWN


def pytest_report_header(config: pytest.Config) -> str | None:
    if EMULATED:
        return f"CONTINUON_EMULATED=1: @pytest.mark.timing bounds scaled x{SLOWDOWN:g}"
    return None
