"""Checks of what users hand to the environments: actions, reset options and trials.

Every check raises ``ValueError`` with a message naming the argument, the offending value
and what is allowed, before anything reaches the simulation (where it would otherwise
surface as NaN rewards, a silently dropped imaginary part or an ``AttributeError``).

>>> import numpy as np
>>> from accelrl.envs.validation import real_array
>>> real_array([1.0, 2.0], "action").dtype
dtype('float64')
>>> real_array(np.array([1 + 2j]), "action")
Traceback (most recent call last):
ValueError: action must be real numbers, got complex128 values (the imaginary part would be lost)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from accelrl.names import INCOMING, TRANSVERSE

if TYPE_CHECKING:
    from accelrl.envs.trials import Trial

#: Reset options of the transverse-tuning environments.
RESET_OPTIONS: tuple[str, ...] = (
    "trial",
    "incoming",
    "misalignments",
    "target",
    "magnets",
    "to_trial",
    "to_incoming",
)
#: Incoming-beam columns that are sizes, divergences, bunch length or energy spread (>= 0).
INCOMING_SIZES: tuple[str, ...] = tuple(k for k in INCOMING if k.startswith("sigma_"))
_REAL_KINDS = frozenset("biuf")


def real_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 array, refusing what has no real-number meaning.

    :param value: Array-like of numbers.
    :param name: What it is, for the message (``"action"``, ``"reset option 'target'"``).
    :raises ValueError: For complex numbers (whose imaginary part would be dropped), strings,
        ``None`` or other objects.
    """
    if isinstance(value, np.ndarray):
        a = value
    else:
        try:
            a = np.asarray(value)
        except (TypeError, ValueError) as err:  # ragged nesting
            raise ValueError(f"{name} must be an array of real numbers: {err}") from None
    kind = a.dtype.kind
    if kind in _REAL_KINDS:
        return a.astype(np.float64, copy=False)
    if kind == "c":
        raise ValueError(
            f"{name} must be real numbers, got {a.dtype} values (the imaginary part would be lost)"
        )
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise ValueError(f"{name} must be real numbers, got {type(value).__name__} {shown}")


def finite_vector(value: Any, n: int, name: str) -> np.ndarray:
    """``value`` as ``n`` finite float64 numbers.

    :raises ValueError: For another size, complex or non-numeric entries, NaN or inf.
    """
    arr = real_array(value, name).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name} needs {n} values, got shape {np.shape(value)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr.tolist()}")
    return arr


def reset_options(options: Any) -> dict[str, Any]:
    """The reset options as a new dict, checking the option names.

    :raises ValueError: When ``options`` is not a mapping or names an unknown option.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(
            f"reset options must be a dict with keys among {list(RESET_OPTIONS)}, "
            f"got {type(options).__name__}"
        )
    unknown = sorted(str(k) for k in options if k not in RESET_OPTIONS)
    if unknown:
        raise ValueError(f"unknown reset options {unknown}; allowed: {list(RESET_OPTIONS)}")
    return dict(options)


def trial_option(value: Any, n: int) -> list[Trial] | None:
    """The reset option ``"trial"``: one trial per environment, or ``None`` for one trial for
    all (returned by the caller as it is).

    :param value: A :class:`~accelrl.envs.trials.Trial` or a sequence of ``n`` of them.
    :param n: Number of environments reset.
    :return: The list of trials for a sequence; ``None`` for a single trial.
    :raises ValueError: For another type, or a sequence of the wrong length or with other
        items than trials.
    """
    from accelrl.envs.trials import Trial

    if isinstance(value, Trial):
        return None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != n:
            raise ValueError(f"reset option 'trial' holds {len(value)} trials for {n} environments")
        bad = [type(t).__name__ for t in value if not isinstance(t, Trial)]
        if bad:
            raise ValueError(
                f"reset option 'trial' must hold Trial objects (accelrl.envs.load_trials), "
                f"got {bad}"
            )
        return list(value)
    raise ValueError(
        "reset option 'trial' must be a Trial (accelrl.envs.load_trials) or a list of one "
        f"per environment, got {type(value).__name__}"
    )


def check_trial_fits(
    trial: Trial, misaligned: Sequence[str], actuators: Sequence[str], initial: bool
) -> None:
    """Check that ``trial`` describes this beamline.

    :param trial: The trial.
    :param misaligned: ``"ELEMENT.x"``/``"ELEMENT.y"`` names the beamline misaligns.
    :param actuators: Actuator names of the task.
    :param initial: Whether the trial's stored start settings are used (then it must give
        one for every actuator and no other).
    :raises ValueError: For misalignments of elements the beamline does not misalign, or
        stored settings that do not match the actuators.
    """
    unknown = sorted(set(trial.misalignments) - set(misaligned))
    if unknown:
        raise ValueError(
            f"trial {trial.index} misaligns {unknown}, which this beamline does not misalign "
            f"(misaligned: {list(misaligned)})"
        )
    if initial:
        missing = [a for a in actuators if a not in trial.initial]
        extra = sorted(set(trial.initial) - set(actuators))
        if missing or extra:
            raise ValueError(
                f"magnets='trial': trial {trial.index} stores settings for "
                f"{sorted(trial.initial)}; the actuators are {list(actuators)} "
                f"(missing {missing}, unknown {extra})"
            )


def _finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_incoming(incoming: np.ndarray, where: str) -> None:
    """Check an incoming beam ``[11]`` (:data:`~accelrl.names.INCOMING` order, SI).

    :param where: What it is, for the message (``"trial 3"``, ``"reset option 'incoming'"``).
    :raises ValueError: For another size, NaN or inf, an energy <= 0 eV or a negative size.
    """
    if incoming.shape != (len(INCOMING),):
        raise ValueError(
            f"{where}: incoming needs {len(INCOMING)} values {INCOMING}, got shape {incoming.shape}"
        )
    for name, value in zip(INCOMING, incoming.tolist(), strict=True):
        if not math.isfinite(value):
            raise ValueError(f"{where}: incoming.{name} = {value}: must be a finite number")
    if not incoming[0] > 0:
        raise ValueError(f"{where}: incoming.energy = {incoming[0]}: must be > 0 eV")
    for name in INCOMING_SIZES:
        value = float(incoming[INCOMING.index(name)])
        if value < 0:
            raise ValueError(f"{where}: incoming.{name} = {value}: must be >= 0")


def check_target(target: np.ndarray, where: str) -> None:
    """Check a target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].

    :raises ValueError: For another size, NaN or inf, or a negative size.
    """
    if target.shape != (len(TRANSVERSE),):
        raise ValueError(f"{where}: target needs 4 values {TRANSVERSE}, got shape {target.shape}")
    for name, value in zip(TRANSVERSE, target.tolist(), strict=True):
        if not math.isfinite(value):
            raise ValueError(f"{where}: target.{name} = {value}: must be a finite number")
        if name.startswith("sigma_") and value < 0:
            raise ValueError(f"{where}: target.{name} = {value}: must be >= 0 m")


def wants_trial_settings(options: Mapping[str, Any]) -> bool:
    """Whether reset ``options`` ask for the trials' stored settings (``magnets="trial"``)."""
    magnets = options.get("magnets")
    return isinstance(magnets, str) and magnets == "trial"


def check_trial_values(
    index: int,
    incoming: np.ndarray,
    target: np.ndarray,
    misalignments: Mapping[str, float],
    initial: Mapping[str, float],
) -> None:
    """Check the values of a trial (SI units).

    :raises ValueError: Naming the trial, the quantity, its value and the allowed range:
        incoming ``[11]`` finite with energy > 0 eV and sizes >= 0; target ``[4]`` finite
        with sizes >= 0 m; misalignments ``"ELEMENT.x|y"`` finite [m]; initial finite.
    """
    where = f"trial {index}"
    check_incoming(incoming, where)
    check_target(target, where)
    for key, value in misalignments.items():
        if not (isinstance(key, str) and key.endswith((".x", ".y")) and len(key) > 2):
            raise ValueError(
                f"{where}: misalignment name {key!r} must be 'ELEMENT.x' or 'ELEMENT.y'"
            )
        if not _finite_number(value):
            raise ValueError(f"{where}: misalignments.{key} = {value!r}: must be a finite number")
    for key, value in initial.items():
        if not _finite_number(value):
            raise ValueError(f"{where}: initial.{key} = {value!r}: must be a finite number")


# ---------------------------------------------------------------------------- task specs
def check_step_range(steps: tuple[int, int], what: str) -> tuple[int, int]:
    """Check an inclusive step range ``(first, last)``: ``1 <= first <= last``.

    :raises ValueError: Naming the range and the rule.
    """
    first, last = steps
    if not 1 <= first <= last:
        raise ValueError(f"{what} range {list(steps)} must satisfy 1 <= first <= last")
    return steps


def check_within_episode(steps: tuple[int, int], episode: int, field: str) -> None:
    """Check that steps ``(first, last)`` lie within an episode of ``episode`` steps.

    :param field: The spec field, for the message (``"randomisation.failure.step"``).
    :raises ValueError: ``field = value: ...`` with the allowed range.
    """
    if steps[1] > episode:
        shown = steps[0] if steps[0] == steps[1] else list(steps)
        raise ValueError(
            f"{field} = {shown}: must lie within the episode, 1..{episode} (max_episode_steps)"
        )


def check_reward(config: Any) -> Any:
    """Check a reward configuration (name or term list, :mod:`accelrl.envs.rewards`).

    :raises ValueError: For unknown terms or options, naming them and the allowed ones.
    """
    from accelrl.envs.rewards import Reward

    try:
        Reward(config)
    except (TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"invalid reward {config!r}: {err}") from None
    if not isinstance(config, str):
        for item in config:
            weight = item.get("weight", 1.0)
            if not _finite_number(weight):
                raise ValueError(
                    f"reward term {item.get('term')!r}: weight = {weight!r}: must be a finite "
                    "number"
                )
    return config
