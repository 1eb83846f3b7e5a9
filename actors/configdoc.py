"""docs/configuration.md, written from the settings models' field descriptions.

python -m actors.configdoc > docs/configuration.md      # after changing a setting
python -m actors.configdoc --check docs/configuration.md  # CI: fails if it drifted
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from actors.settings import Settings

HEADER = """\
# Configuration

<!-- Written by `python -m actors.configdoc` from the field descriptions in
actors/settings.py; CI checks that this file matches them. Edit those, not this. -->

raygate reads one settings model, validated at load and frozen; a bad value
fails with the field's dotted name. Precedence, highest first: the
environment (`RAYGATE_` and the dotted name with `__` for dots, e.g.
`RAYGATE_QUEUE__CONCURRENCY=8`), the YAML file (the path given to the command,
else `$RAYGATE_CONFIG`), the defaults below. Keys are `SecretStr`: they never
appear in logs, metrics, spans, errors or reprs.

```yaml
queue:
  group_limits: {"local-ollama-http://localhost:11434@gpu-a": 2}
models:
  llama: {provider: ollama, base_url: "http://localhost:11434", host: gpu-a}
serve:
  api_keys: ["change-me"]
```
"""


def markdown() -> str:
    """The whole of docs/configuration.md."""
    sections = [HEADER]
    top = []
    for name, info in Settings.model_fields.items():
        model = _model_of(info)
        if model is None:
            top.append((name, info))
            continue
        sections.append(_section(name, model))
    rows = "".join(_field_rows(name, info) for name, info in top)
    sections.append(f"## Top level\n\n{_TABLE}{rows}")
    return "\n".join(sections)


_TABLE = "| setting | default | what it does |\n|---|---|---|\n"


def _section(name: str, model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    return f"## `{name}`\n\n{doc}\n\n{_TABLE}{_rows(name, model)}"


def _rows(name: str, model: type[BaseModel]) -> str:
    return "".join(
        _field_rows(f"{name}.{field}", info) for field, info in model.model_fields.items()
    )


def _field_rows(name: str, info: FieldInfo) -> str:
    """The field's row; a mapping of names to models (``serve.tenants``) or a list of
    models (``models.<name>.servers``) gets a row per field of its entries too
    (``serve.tenants.<name>.keys``, ``models.<name>.servers.<n>.limit``)."""
    entries = _entries_of(info)
    return _row(name, info) + ("" if entries is None else _rows(f"{name}.{entries[0]}", entries[1]))


def _model_of(info: FieldInfo) -> type[BaseModel] | None:
    return _a_model(info.annotation)


def _entries_of(info: FieldInfo) -> tuple[str, type[BaseModel]] | None:
    """How the entries of a ``dict[str, Model]`` or ``tuple[Model, ...]`` field are named,
    and their model."""
    origin, args = typing.get_origin(info.annotation), typing.get_args(info.annotation)
    model = _a_model(args[1]) if origin is dict else _a_model(args[0]) if origin is tuple else None
    if model is None:
        return None
    return ("<name>" if origin is dict else "<n>"), model


def _a_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _row(name: str, info: FieldInfo) -> str:
    if not info.description:
        raise SystemExit(f"settings field {name} has no description")
    return f"| `{name}` | {_default(info)} | {info.description} |\n"


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None or value == () or value == {}:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        tmp = tempfile.gettempdir()
        shown = str(value)
        return f"`{'<tempdir>' + shown[len(tmp) :] if shown.startswith(tmp) else shown}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"`{value:_}`"
    return f"`{value}`"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.configdoc", description=__doc__)
    parser.add_argument("--check", type=Path, help="fail if this file differs from the settings")
    args = parser.parse_args(argv)
    text = markdown()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    if args.check.read_text(encoding="utf-8") != text:
        print(
            f"{args.check} does not match the settings' descriptions: "
            f"run `python -m actors.configdoc > {args.check}`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
