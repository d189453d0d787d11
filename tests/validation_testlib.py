"""Random corruptions of configuration mappings for the property tests of input validation.

A configuration is a nested mapping (as loaded from YAML). :func:`numeric_leaves` lists the
paths of its numbers; :func:`corrupt` returns a copy with one of them replaced. Every
corruption in :data:`ALWAYS_INVALID` is meaningless for any numeric field of accelrl's
configurations, so the validator must refuse it and name the field.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

Path = tuple[str | int, ...]

#: Values no numeric field accepts: NaN, +-inf, text, a list, a mapping.
ALWAYS_INVALID: tuple[Any, ...] = (
    math.nan,
    math.inf,
    -math.inf,
    "abc",
    [1.0, 2.0],
    {"x": 1.0},
)

#: Hypothesis settings of the property tests: a few hundred examples, no deadline.
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def numeric_leaves(data: Any, path: Path = ()) -> Iterator[Path]:
    """Paths of every number (not bool) in a nested mapping/list."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from numeric_leaves(value, (*path, key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from numeric_leaves(value, (*path, i))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield path


def get(data: Any, path: Path) -> Any:
    """The value at ``path``."""
    for key in path:
        data = data[key]
    return data


def corrupt(data: Any, path: Path, value: Any) -> Any:
    """A deep copy of ``data`` with the value at ``path`` replaced by ``value``."""
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def field_name(path: Path) -> str:
    """The last name in ``path`` (list indices skipped): what the error must mention."""
    return next(str(k) for k in reversed(path) if isinstance(k, str))


def negative_of(value: float) -> float:
    """A negative number (for fields that must be >= 0)."""
    return -(abs(float(value)) * 1.5 + 1e-6)


def leaf_and_corruption(leaves: list[Path]) -> st.SearchStrategy[tuple[Path, Any]]:
    """A numeric leaf and a value from :data:`ALWAYS_INVALID`."""
    return st.tuples(st.sampled_from(leaves), st.sampled_from(ALWAYS_INVALID))


def assert_names(message: str, *words: str) -> None:
    """Every word appears in the error message (with a readable failure)."""
    missing = [w for w in words if w not in message]
    assert not missing, f"{missing} not in the error message:\n{message}"
