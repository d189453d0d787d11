"""Reading user configuration files (task specs, recipes): YAML mappings with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pydantic import ValidationError


def load_yaml_mapping(path: str | Path, error: type[ValueError], kind: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path``.

    :param error: Exception raised on failure (e.g. ``SpecError``), with the file named.
    :param kind: What the file is, for the messages (``"task spec"``, ``"recipe"``).
    :raises error: If the file is missing, not valid YAML, or not a mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {kind} file not found") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(err: ValidationError, header: str, show_input: bool = True) -> str:
    """``header``, then one line per error: ``  field.path: message (got value)``.

    :param err: The pydantic error.
    :param header: First line, naming the file (e.g. ``"invalid machine config a.yaml:"``).
    :param show_input: Show the offending value (never for mappings and lists).
    """
    lines = [header]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = "" if not show_input or isinstance(value, dict | list) else f" (got {value!r})"
        lines.append(f"  {where}: {e['msg']}{shown}")
    return "\n".join(lines)


def field_value_errors(err: ValidationError) -> list[str]:
    """One line per error: ``  field.path = value: message`` (the value shortened to 80
    characters; pydantic's ``"Value error, "`` prefix dropped; no ``= value`` for errors of
    the whole model)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if loc:
            value = repr(e.get("input"))
            value = value if len(value) <= 80 else value[:77] + "..."
            lines.append(f"  {loc} = {value}: {msg}")
        else:
            lines.append(f"  {msg}")
    return lines
