"""Logging set-up: JSON lines for journald, readable text on a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from brain.logs import log_fields, setup_logging

pytestmark = pytest.mark.timeout(20)


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "_BrainHandler"]


def test_json_lines_with_fields_and_exception() -> None:
    out = io.StringIO()
    setup_logging("DEBUG", "json", stream=out)
    log = logging.getLogger("brain.test")
    before = datetime.now(UTC)
    log.info("tick %d overrun", 7, extra=log_fields(ms=12.5, obj=object(), nan=float("nan")))
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("camera failed", extra={"fields": {"msg": "clash", "camera": "rgb"}})
    log.debug("multi\nline")

    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)

    assert first["level"] == "INFO"
    assert first["logger"] == "brain.test"
    assert first["msg"] == "tick 7 overrun"
    assert first["ms"] == 12.5
    assert first["obj"].startswith("<object object")
    assert first["nan"] == "nan"
    assert "exc" not in first
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    ts = datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert abs(ts - before) < timedelta(seconds=5)

    assert second["level"] == "ERROR"
    assert second["msg"] == "camera failed"
    assert second["camera"] == "rgb"
    assert second["field_msg"] == "clash"  # a field never hides a core key
    assert "Traceback" in second["exc"] and "ValueError: bad frame" in second["exc"]

    assert third["msg"] == "multi\nline"


def test_text_format_is_readable() -> None:
    out = io.StringIO()
    setup_logging("INFO", "text", stream=out)
    log = logging.getLogger("brain.control")
    log.info("mode changed", extra=log_fields(mode="MANUAL", reason="two words", hz=20))
    log.debug("hidden")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.error("tick failed", exc_info=True)
    text = out.getvalue()
    first = text.splitlines()[0]
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} INFO brain\.control: mode changed "
        r'mode=MANUAL reason="two words" hz=20',
        first,
    ), first
    assert "hidden" not in text
    assert "ERROR brain.control: tick failed" in text
    assert "ZeroDivisionError" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)


def test_auto_picks_json_under_journald_or_without_tty(monkeypatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    tty = TtyStream()
    setup_logging("INFO", "auto", stream=tty)
    logging.getLogger("x").info("hello")
    assert not tty.getvalue().startswith("{")
    assert "INFO x: hello" in tty.getvalue()

    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    tty = TtyStream()
    setup_logging("INFO", "auto", stream=tty)
    logging.getLogger("x").info("hello")
    assert json.loads(tty.getvalue())["msg"] == "hello"

    monkeypatch.delenv("JOURNAL_STREAM")
    pipe = io.StringIO()  # not a terminal
    setup_logging("INFO", "auto", stream=pipe)
    logging.getLogger("x").info("hello")
    assert json.loads(pipe.getvalue())["msg"] == "hello"


def test_setup_is_idempotent_and_replaces_our_handler() -> None:
    a, b = io.StringIO(), io.StringIO()
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    try:
        setup_logging("INFO", "json", stream=a)
        setup_logging("WARNING", "json", stream=b)
        assert len(ours()) == 1
        assert foreign in logging.getLogger().handlers
        logging.getLogger("y").warning("once")
        logging.getLogger("y").info("filtered")
        assert a.getvalue() == ""
        assert [json.loads(line)["msg"] for line in b.getvalue().splitlines()] == ["once"]
        assert logging.getLogger().level == logging.WARNING
    finally:
        logging.getLogger().removeHandler(foreign)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        setup_logging("LOUD", "json", stream=io.StringIO())
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml", stream=io.StringIO())  # type: ignore[arg-type]
    assert log_fields(a=1) == {"fields": {"a": 1}}
