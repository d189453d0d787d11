"""Reading user configuration files (task specs, recipes): YAML mappings with clear errors."""

from __future__ import annotations

from collections.abc import Callable
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
    """``header``, then :func:`field_value_errors` one per line.

    :param err: The pydantic error.
    :param header: First line, naming the file (e.g. ``"invalid machine config a.yaml:"``).
    :param show_input: Show the offending values.
    """
    return "\n".join([header, *field_value_errors(err, show_input)])


def field_value_errors(
    err: ValidationError,
    show_input: bool = True,
    location: Callable[[list[str]], list[str]] | None = None,
) -> list[str]:
    """One line per error: ``  field.path = value: message``.

    The value is shortened to 80 characters and left out for mappings (and with
    ``show_input=False``: ``  field.path: message``); pydantic's ``"Value error, "`` prefix is
    dropped; errors of the whole model are ``  message``.

    :param err: The pydantic error.
    :param show_input: Show the offending values.
    :param location: Rewrites each error's field path (e.g. drops a discriminator tag).
    """
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if location is not None:
            loc = location(loc)
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if not loc:
            lines.append(f"  {msg}")
        elif show_input and not isinstance(value, dict):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            lines.append(f"  {'.'.join(loc)} = {shown}: {msg}")
        else:
            lines.append(f"  {'.'.join(loc)}: {msg}")
    return lines
