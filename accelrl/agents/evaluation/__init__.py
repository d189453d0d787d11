"""One evaluation protocol for every optimiser: run, record, measure, report.

* :mod:`~accelrl.agents.evaluation.loop`: the rollout loop every rollout of the package goes
  through (the protocol of a trial, the trial seed rule, the vectorised path);
* :mod:`~accelrl.agents.evaluation.runner`: :func:`evaluate` / :func:`evaluate_many` on a
  trial set, in parallel through an executor;
* :mod:`~accelrl.agents.evaluation.result`: :class:`EvaluationResult` (records, per-trial
  metrics, summaries, files);
* :mod:`~accelrl.agents.evaluation.store`: the parts an evaluation writes as it runs, and
  resuming it;
* :mod:`~accelrl.agents.evaluation.trialset`: the trial set, its provenance and chunks;
* :mod:`~accelrl.agents.evaluation.metrics`: the published metrics and their summaries;
* :mod:`~accelrl.agents.evaluation.report`: ``report.md`` and its figures.

>>> from accelrl.agents.evaluation import evaluate
>>> result = evaluate("nelder-mead", limit=10, executor="serial")  # doctest: +SKIP
"""

from accelrl.agents.evaluation.loop import TRIAL_SEED_RULE, run_trials, trial_seed
from accelrl.agents.evaluation.result import BEAM_KEYS, EvaluationResult
from accelrl.agents.evaluation.runner import (
    DEFAULT_ENV_ID,
    DEFAULT_MAX_STEPS,
    MakeOptimiser,
    evaluate,
    evaluate_many,
)

__all__ = [
    "BEAM_KEYS",
    "DEFAULT_ENV_ID",
    "DEFAULT_MAX_STEPS",
    "EvaluationResult",
    "MakeOptimiser",
    "TRIAL_SEED_RULE",
    "evaluate",
    "evaluate_many",
    "run_trials",
    "trial_seed",
]
