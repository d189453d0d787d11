"""Settings of a tuning session (pydantic; no BoTorch import, so the registry stays light).

>>> from accelrl.agents.bo.config import session_config
>>> session_config({"acquisition": "ucb", "beta": 4.0}).beta
4.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from accelrl.agents.bo.guard import TrustRegionConfig
from accelrl.config import format_validation_error

__all__ = ["CORRELATION_THRESHOLD", "MIN_POINTS_FOR_CHECK", "SessionConfig", "session_config"]

#: Below this Pearson correlation of the prior's predictions with the observed (modelled)
#: objective, the session uses the constant-mean GP instead.
CORRELATION_THRESHOLD = 0.5
#: Fewest points before the correlation check can trigger the fallback.
MIN_POINTS_FOR_CHECK = 5


class SessionConfig(BaseModel):
    """Settings of a tuning session.

    :param acquisition: ``"logei"`` (default) or ``"ucb"``.
    :param beta: UCB exploration weight.
    :param budget_s: Wall-time budget of the acquisition optimisation per suggestion [s].
    :param fit_maxiter: L-BFGS iterations of each GP fit (warm-started).
    :param restarts: Gradient-based restarts of the acquisition optimisation.
    :param raw_samples: Random candidates that pick the restarts.
    :param acq_maxiter: L-BFGS iterations of the acquisition optimisation.
    :param seed: Seed of the session's randomness (raw samples).
    :param threads: Torch intra-op threads during a suggestion.
    :param trust: Trust-region configuration.
    :param correlation_threshold: Prior-data correlation below which the constant mean is used.
    :param min_points_for_check: Fewest points before that fallback can trigger.
    :param on_critical: After a critical violation: ``"return"`` to the last safe setting and
        go on, or ``"pause"`` until :meth:`TuningSession.resume`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    acquisition: Literal["logei", "ucb"] = "logei"
    beta: float = Field(2.0, ge=0.0)
    budget_s: float = Field(0.08, gt=0.0, le=600.0)
    fit_maxiter: int = Field(15, ge=1, le=10_000)
    restarts: int = Field(3, ge=1, le=256)
    raw_samples: int = Field(64, ge=1, le=100_000)
    acq_maxiter: int = Field(15, ge=1, le=10_000)
    seed: int = Field(0, ge=0)
    threads: int = Field(1, ge=1, le=1024)
    trust: TrustRegionConfig = TrustRegionConfig()
    correlation_threshold: float = Field(CORRELATION_THRESHOLD, ge=-1.0, le=1.0)
    min_points_for_check: int = Field(MIN_POINTS_FOR_CHECK, ge=2)
    on_critical: Literal["return", "pause"] = "return"


def session_config(value: SessionConfig | Mapping[str, Any] | None) -> SessionConfig:
    """A validated :class:`SessionConfig` (``None``: defaults).

    :raises ValueError: Naming each invalid field, its value and the allowed range.
    """
    if value is None:
        return SessionConfig()
    if isinstance(value, SessionConfig):
        return value
    try:
        return SessionConfig.model_validate(dict(value))
    except ValidationError as err:
        raise ValueError(format_validation_error(err, "invalid session config:")) from None
