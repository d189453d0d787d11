"""Target classes of evaluation trials, and the results of each optimiser per class.

Medians over all trials hide a class of targets on which an optimiser fails (e.g. zero-size
targets, which no setting reaches). Every trial falls in one class of each of three
groupings, from its target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m] and hidden state:

**size**

* ``zero``: a target size is 0 (``sigma_x == 0`` or ``sigma_y == 0``; the complement of
  the ``sigma_pos`` subset; the 27 grid trials 0..26 of the published set and every trial
  of the ``rl4aa25`` protocol);
* ``small``: both sizes > 0 and the larger below :data:`SMALL_SIZE` (200 um);
* ``large``: both sizes > 0 and the larger at least 200 um. (The published random targets
  have sizes up to 0.5 mm; 200 um splits them in about equal halves.)

**position**

* ``centred``: ``|mu_x|`` and ``|mu_y|`` both at most :data:`CENTRED` (0.5 mm, a quarter of
  the +-2 mm range of the published targets);
* ``off-centre``: otherwise.

**reachable**

* ``yes``: the *model optimum* of the trial is below :data:`REACHABLE_MAE` (20 um, the
  protocol's target): the smallest MAE to the target that the Levenberg-Marquardt solve of
  the model-based tuner (:meth:`~accelrl.agents.tuners.model_based.ModelBasedTuner.solve`)
  finds on the compiled beamline with the trial's *true* incoming beam and misalignments
  (ideal world, settings within the limits), from the standard start and
  :data:`REACHABILITY_STARTS` uniformly random starts (seeded by the trial index);
* ``no``: otherwise. A local solve can miss a better optimum, so ``no`` means "not found
  by the solver". On the published 300 trials 296 are reachable, the zero-size targets
  included (the beam focuses to a few um, so an MAE below 20 um exists although a size of
  0 does not); the solve costs ~0.3 s per trial (2-core CPU) and is made once per
  evaluation, not per optimiser or world.

Per optimiser and class, :func:`class_breakdown` gives the number of trials and the medians
of the initial, best and final MAE; a class is **flagged** when the optimiser's median
final MAE is worse than its median initial MAE *and* worse than do-nothing's median final
MAE in the class (when do-nothing was not evaluated, its stand-in is the median initial
MAE: in a world without drift, doing nothing keeps the initial MAE). In a drifting world
doing nothing itself ends worse than it started; an optimiser is flagged only when it does
worse than that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from accelrl.envs import Trial

#: Larger target size below which a target with both sizes > 0 is ``small`` [m].
SMALL_SIZE = 200e-6
#: Largest ``|mu_x|``, ``|mu_y|`` of a ``centred`` target [m].
CENTRED = 0.5e-3
#: Model optimum below which a trial is ``reachable`` [m].
REACHABLE_MAE = 20e-6
#: Random starts of the reachability solve (besides the standard start).
REACHABILITY_STARTS = 8
#: The groupings and their classes, in report order.
CLASSES: dict[str, tuple[str, ...]] = {
    "size": ("zero", "small", "large"),
    "position": ("centred", "off-centre"),
    "reachable": ("yes", "no"),
}
#: Optimiser name of the do-nothing baseline (the reference of the flags).
DO_NOTHING = "do-nothing"


def size_class(target: np.ndarray) -> str:
    """``"zero"``, ``"small"`` or ``"large"`` of a target ``[4]`` [m] (module docs)."""
    t = np.asarray(target, dtype=np.float64).reshape(4)
    if not (t[1] > 0 and t[3] > 0):
        return "zero"
    return "small" if max(t[1], t[3]) < SMALL_SIZE else "large"


def position_class(target: np.ndarray) -> str:
    """``"centred"`` or ``"off-centre"`` of a target ``[4]`` [m] (module docs)."""
    t = np.asarray(target, dtype=np.float64).reshape(4)
    return "centred" if max(abs(t[0]), abs(t[2])) <= CENTRED else "off-centre"


def model_optimum(
    trials: Sequence[Trial], env_id: str | None = None, starts: int = REACHABILITY_STARTS
) -> np.ndarray:
    """The model optimum ``[N]`` [m] of each trial: the smallest MAE to its target that the
    model-based tuner's solve finds with the trial's true hidden state (module docs).

    :param trials: The trials.
    :param env_id: Registered task or task YAML (default ARES-EA).
    :param starts: Random starts besides the task's standard start.
    """
    from accelrl.agents.tuners.model_based import ModelBasedTuner
    from accelrl.envs import resolve_task
    from accelrl.names import ARES_EA_ID
    from accelrl.protocol import Problem

    task = resolve_task(env_id or ARES_EA_ID)
    spec = task.spec
    tuner = ModelBasedTuner(iterations=60, spec=spec, segment=task.segment)
    low = np.array([a.low for a in spec.actuators], dtype=np.float64)
    high = np.array([a.high for a in spec.actuators], dtype=np.float64)
    start = np.array(spec.start, dtype=np.float64)
    names = [f"{e}.{axis}" for e in tuner.model.beamline.misaligned for axis in ("x", "y")]
    out = np.empty(len(trials))
    for i, trial in enumerate(trials):
        tuner.reset(
            Problem(
                actuator_names=tuple(a.name for a in spec.actuators),
                low=low,
                high=high,
                start=start,
                target=np.asarray(trial.target, dtype=np.float64),
                max_delta=spec.delta_fraction * np.maximum(np.abs(low), np.abs(high)),
                max_steps=1,
                seed=int(trial.index),
            )
        )
        tuner.fit = _KnownState(trial.incoming, trial.misalignment_vector(names))
        rng = np.random.default_rng(int(trial.index))
        u0 = 2.0 * (start - low) / (high - low) - 1.0
        U = np.vstack([u0, rng.uniform(-1.0, 1.0, (starts, len(low)))])
        _, mae = tuner.solve(U)
        out[i] = float(np.min(mae))
    return out


_OPTIMA: dict[tuple[str, str], dict[int, float]] = {}


def trial_optimum(trials: Sequence[Trial], env_id: str, digest: str) -> dict[int, float] | None:
    """Trial index -> :func:`model_optimum` [m], solved once per trial set (``digest``, see
    :func:`~accelrl.agents.evaluation.trialset.trials_digest`) and process; ``None`` for a
    task without a lattice (no model to solve)."""
    from accelrl.envs import resolve_task

    task = resolve_task(env_id)
    if task.spec.lattice is None and task.segment is None:
        return None
    key = (env_id, digest)
    if key not in _OPTIMA:
        values = model_optimum(trials, env_id)
        _OPTIMA[key] = {int(t.index): float(v) for t, v in zip(trials, values, strict=True)}
    return _OPTIMA[key]


class _KnownState:
    """The hidden state of a trial as the model-based tuner's fit presents it."""

    def __init__(self, incoming: np.ndarray, misalignments: np.ndarray) -> None:
        self.incoming = np.asarray(incoming, dtype=np.float64)
        self.misalignments = np.asarray(misalignments, dtype=np.float64)

    def reset(self) -> None:
        """Nothing to forget: the state is known."""


def trial_classes(targets: np.ndarray, optimum: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Class of every trial in every grouping: ``{"size": [N] str, "position": [N] str,
    "reachable": [N] str}`` (``reachable`` only when ``optimum`` [m] is given)."""
    t = np.asarray(targets, dtype=np.float64).reshape(-1, 4)
    out = {
        "size": np.array([size_class(x) for x in t], dtype=object),
        "position": np.array([position_class(x) for x in t], dtype=object),
    }
    if optimum is not None:
        opt = np.asarray(optimum, dtype=np.float64).reshape(-1)
        out["reachable"] = np.where(opt < REACHABLE_MAE, "yes", "no").astype(object)
    return out


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def class_breakdown(
    tables: Mapping[str, Mapping[str, np.ndarray]],
    classes: Mapping[str, np.ndarray],
    names: Mapping[str, str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Results of every optimiser per target class.

    :param tables: Optimiser label -> per-trial columns (``initial_mae``, ``best_mae``,
        ``final_mae``, ``steps_to_target`` [m, steps]), trials in the order of ``classes``.
    :param classes: :func:`trial_classes` of the trials.
    :param names: Optimiser label -> optimiser name; the label whose name is
        ``do-nothing`` is the reference of the flags.
    :return: ``{label: {"group:class": {n, median_initial_mae_um, median_best_mae_um,
        median_final_mae_um, fraction_reached_target, fraction_worse_than_start,
        worse_than_start, worse_than_do_nothing, flagged}}}`` (MAE in um; classes without
        trials are left out; ``flagged``: worse than its start and than do-nothing).
        ``worse_than_do_nothing`` compares with do-nothing's median final MAE in the
        class, or the median initial MAE when do-nothing was not run.
    """
    names = dict(names or {})
    reference = next((k for k, v in names.items() if v == DO_NOTHING), None)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, t in tables.items():
        initial, best, final = (np.asarray(t[k], dtype=np.float64) for k in
                                ("initial_mae", "best_mae", "final_mae"))  # fmt: skip
        reached = np.isfinite(np.asarray(t["steps_to_target"], dtype=np.float64))
        out[label] = {}
        for group, members in CLASSES.items():
            if group not in classes:
                continue
            for cls in members:
                m = np.asarray(classes[group]) == cls
                if not m.any():
                    continue
                mi, mf = _median(initial[m]), _median(final[m])
                assert mi is not None and mf is not None
                if reference is not None:
                    ref = _median(np.asarray(tables[reference]["final_mae"], np.float64)[m])
                else:
                    ref = mi
                worse_start = mf > mi
                worse_nothing = ref is not None and mf > ref
                out[label][f"{group}:{cls}"] = {
                    "n": int(m.sum()),
                    "median_initial_mae_um": mi * 1e6,
                    "median_best_mae_um": float(np.median(best[m])) * 1e6,
                    "median_final_mae_um": mf * 1e6,
                    "fraction_reached_target": float(reached[m].mean()),
                    "fraction_worse_than_start": float((final[m] > initial[m]).mean()),
                    "worse_than_start": bool(worse_start),
                    "worse_than_do_nothing": bool(worse_nothing),
                    "flagged": bool(worse_start and worse_nothing),
                }
    return out


def flagged(breakdown: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """One line per flagged optimiser and class, e.g. ``"policy:x, size:zero (27 trials):
    median final MAE 3812 um > median initial 702 um; 21/27 trials worse than their
    start"``."""
    lines = []
    for label, per in breakdown.items():
        for key, e in per.items():
            if not e["flagged"]:
                continue
            worse = round(e["fraction_worse_than_start"] * e["n"])
            what = []
            if e["worse_than_start"]:
                what.append(f"> median initial {e['median_initial_mae_um']:.0f} um")
            if e["worse_than_do_nothing"]:
                what.append("> do-nothing's")
            lines.append(
                f"{label}, {key} ({e['n']} trials): median final MAE "
                f"{e['median_final_mae_um']:.0f} um {' and '.join(what)}; "
                f"{worse}/{e['n']} trials worse than their start"
            )
    return lines


def finite_or_none(x: float) -> float | None:
    """``x``, or ``None`` when it is not finite (for JSON)."""
    return float(x) if math.isfinite(x) else None
