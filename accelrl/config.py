"""Reading user configuration files (task specs, recipes): YAML mappings with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


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
