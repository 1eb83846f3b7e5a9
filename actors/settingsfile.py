"""Where the settings are read from, and how their faults are told.

:func:`actors.settings.load_settings` validates; this module feeds it and words
its failures: which source (the path given, else ``$RAYGATE_CONFIG``, else the
environment alone), that file's YAML as plain data, and a validation error as
one line per bad field, named by its dotted path. Nothing here knows a field,
so :mod:`actors.settings` reads as the description of the settings alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from actors.errors import ConfigError

CONFIG_ENV = "RAYGATE_CONFIG"


def read_source(path: str | Path | None) -> tuple[str, dict[str, Any]]:
    """The source's name, for errors, and what it says: the YAML file at ``path``, else
    at ``$RAYGATE_CONFIG``; with neither, nothing (the environment alone)."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    if path is None:
        return "the environment", {}
    return str(path), _read_yaml(Path(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), (f"cannot read the file: {exc.strerror}",)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(str(path), (f"malformed YAML{where}: {problem}",)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), (f"the top level must be a mapping, got {type(data).__name__}",)
        )
    return data


def describe(exc: ValidationError) -> tuple[str, ...]:
    """Each problem as ``dotted.field: what is wrong``, for :class:`ConfigError`."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        # Echo numbers and flags back; never echo strings, which may be secrets.
        got = error.get("input")
        shown = f" (got {got!r})" if isinstance(got, int | float | bool) else ""
        problems.append(f"{field}: {error['msg']}{shown}")
    return tuple(problems)
