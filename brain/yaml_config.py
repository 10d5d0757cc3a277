"""Loading a YAML file into a strict pydantic model, with errors a person can act on.

Shared by the robot config (brain.config) and the training config
(cloud_jobs.train.config): every problem is reported as
``file:line: dotted.key = value: expected ...``, unknown keys included,
instead of a pydantic traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
ErrorFactory = Callable[[str, list[str]], Exception]


def line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of a YAML document to its 1-based line."""
    index: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = (*path, str(key.value))
                index[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = (*path, str(i))
                index[p] = item.start_mark.line + 1
                walk(item, p)

    if root is not None:
        walk(root, ())
    return index


def _data_path(
    raw: Any, loc: tuple[Any, ...], union_tags: Collection[str]
) -> tuple[tuple[str, ...], Any, bool]:
    """Follow pydantic's error location through the raw data.

    Skips the tags pydantic inserts for tagged unions (they are not keys in
    the file) and returns (key path, value found there, whether it exists).
    """
    path: list[str] = []
    node: Any = raw
    found = True
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            path.append(str(part))
            node = node[part]
        elif isinstance(part, str) and (part in union_tags or part.startswith("function-")):
            continue
        else:
            path.append(str(part))
            found = False
            node = None
    return tuple(path), node, found


def describe(
    err: Mapping[str, Any],
    raw: Any,
    lines: dict[tuple[str, ...], int],
    source: str,
    union_tags: Collection[str] = (),
) -> str:
    path, value, found = _data_path(raw, tuple(err.get("loc", ())), union_tags)
    key = ".".join(path) if path else "(top level)"
    line = None
    for n in range(len(path), 0, -1):
        line = lines.get(path[:n])
        if line is not None:
            break
    where = f"{source}:{line}" if line else source
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"{where}: unknown key {key!r} (value {value!r}); remove it or check its spelling"
    if kind == "missing":
        return f"{where}: missing required key {key!r}"
    for prefix in ("Input should be ", "Value should be "):
        msg = msg.removeprefix(prefix)
    shown = repr(value) if found else "(absent)"
    return f"{where}: {key} = {shown}: expected {msg}"


def parse_model(
    model: type[M],
    raw: Any,
    *,
    error: ErrorFactory,
    source: str = "<config>",
    text: str | None = None,
    union_tags: Collection[str] = (),
) -> M:
    """Validate already-loaded YAML data; ``text`` lets errors carry line numbers."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise error(source, [f"the top level must be a mapping of sections, not {kind}"])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = line_index(text) if text else {}
        problems = [describe(e, raw, lines, source, union_tags) for e in exc.errors()]
        raise error(source, problems) from None


def load_model_file(
    model: type[M],
    path: str | os.PathLike[str],
    *,
    error: ErrorFactory,
    union_tags: Collection[str] = (),
) -> M:
    """Read a YAML file and validate it; every problem is raised through ``error``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(str(p), [f"{p}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(str(p), [f"{p}: cannot be read: {exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(str(p), [f"{where}: not valid YAML: {problem}"]) from None
    return parse_model(model, raw, error=error, source=str(p), text=text, union_tags=union_tags)
