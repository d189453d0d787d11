"""Training a :class:`~accelrl.surrogates.models.ensemble.Surrogate` on a dataset.

The rows are split once, seeded, into train / validation / test (by row, before the status
filter, so the validity classifier and the regressors hold out the same runs). Regressors are
fitted on the ``ok`` rows with the beta-NLL loss (Seitzer et al. 2022, ``beta = 0.5``: the
Gaussian NLL weighted by the detached predicted variance to the power beta, which keeps the
mean fit as good as with MSE while learning the variance), the classifier on ``ok`` versus
``no_beam`` rows (``failed`` runs are numerical failures, not physics, and are left out).
Every member is early-stopped on its own validation loss; the best weights of each member are
kept. The per-output variance scale is then fitted on the validation split (the factor that
makes the mean squared standardised residual 1), so that held-out intervals are calibrated.

>>> from accelrl.surrogates.dataset import load_dataset
>>> from accelrl.surrogates.models import TrainConfig, train_surrogate
>>> result = train_surrogate(load_dataset("lpa_beamloading"), TrainConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from accelrl.surrogates.models.ensemble import Architecture, InputInfo, OutputInfo, Surrogate

#: Output-name fragments modelled in log space when the values are all positive.
LOG_HINTS: tuple[str, ...] = (
    "charge",
    "emittance",
    "emit",
    "spread",
    "divergence",
    "size",
    "sigma",
    "length",
    "current",
)


class TrainConfig(BaseModel):
    """Surrogate training settings.

    :param outputs: Outputs to model (default: every spec output with enough finite values).
    :param log_outputs: Outputs modelled in log space (default: positive outputs whose name
        contains one of :data:`LOG_HINTS` or that span more than a decade).
    :param architecture: Network shape.
    :param learning_rate: Adam learning rate.
    :param weight_decay: AdamW weight decay.
    :param batch_size: Mini-batch size (rows).
    :param max_epochs: Upper limit of epochs.
    :param patience: Epochs without validation improvement before a member stops.
    :param beta: Exponent of the beta-NLL loss (0: plain Gaussian NLL, 1: MSE-like).
    :param val_fraction: Fraction of rows for validation (early stopping, calibration).
    :param test_fraction: Fraction of rows held out for the report.
    :param min_finite: Smallest number of finite training values for an output to be modelled.
    :param validity: Label of the validity classifier: ``"auto"`` (a run is valid when its
        status is ``ok`` and, if the table has a ``beam_intact`` column, the beam is intact),
        ``"status"`` (status ``ok`` versus ``no_beam``) or the name of a 0/1 column.
    :param seed: Seeds the split, the initial weights and the batch order.
    """

    model_config = ConfigDict(extra="forbid")
    outputs: list[str] | None = None
    log_outputs: list[str] | None = None
    architecture: Architecture = Field(default_factory=Architecture)
    learning_rate: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    batch_size: int = Field(default=64, ge=1)
    max_epochs: int = Field(default=1500, ge=1)
    patience: int = Field(default=150, ge=1)
    beta: float = Field(default=0.5, ge=0, le=1)
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, ge=0, lt=0.5)
    min_finite: int = Field(default=20, ge=2)
    validity: str = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> TrainConfig:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves under 20% for training"
            )
        return self


@dataclass
class Split:
    """Row indices (into the dataset table) of the three splits."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        return {k: getattr(self, k).tolist() for k in ("train", "val", "test")}


@dataclass
class TrainResult:
    """A trained surrogate, its split (table row indices) and training history."""

    model: Surrogate
    split: Split
    history: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def split_rows(n: int, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Seeded random split of ``n`` rows into train / validation / test."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = max(1, int(round(val_fraction * n)))
    return Split(
        train=np.sort(perm[n_test + n_val :]),
        val=np.sort(perm[n_test : n_test + n_val]),
        test=np.sort(perm[:n_test]),
    )


def choose_outputs(
    table: pd.DataFrame, names: list[str], min_finite: int, ok: np.ndarray
) -> list[str]:
    """The outputs with at least ``min_finite`` finite values among the ``ok`` rows, not
    constant and not binary (0/1 flags such as ``beam_intact`` are labels, not regression
    targets)."""
    chosen = []
    for n in names:
        v = table.loc[ok, n].to_numpy(np.float64)
        f = v[np.isfinite(v)]
        binary = f.size > 0 and bool(np.isin(f, (0.0, 1.0)).all())
        if f.size >= min_finite and np.std(f) > 0 and not binary:
            chosen.append(n)
    return chosen


def choose_transform(name: str, values: np.ndarray, log_outputs: list[str] | None) -> str:
    """``"log"`` or ``"identity"`` for an output (see :class:`TrainConfig`)."""
    v = values[np.isfinite(values)]
    positive = v.size > 0 and bool(np.all(v > 0))
    if log_outputs is not None:
        if name in log_outputs and not positive:
            raise ValueError(f"log_outputs names {name!r}, which has values <= 0")
        return "log" if name in log_outputs else "identity"
    if not positive:
        return "identity"
    wide = v.max() / v.min() > 10.0
    if "fraction" in name.lower():  # bounded in (0, 1], piled up at 1: keep linear
        return "identity"
    hinted = any(h in name.lower() for h in LOG_HINTS)
    return "log" if (wide or hinted) else "identity"


def validity_labels(table: pd.DataFrame, validity: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows with a validity label, the label (``True``: valid), and the label's description.

    ``failed`` runs (numerical failures, not physics) carry no label.

    :raises ValueError: For an unknown column or a column that is not 0/1.
    """
    status = table["status"].astype(str).to_numpy()
    labelled = np.isin(status, ("ok", "no_beam"))
    ok = status == "ok"
    column = None
    if validity == "auto":
        column = "beam_intact" if "beam_intact" in table.columns else None
    elif validity != "status":
        if validity not in table.columns:
            raise ValueError(f"validity column {validity!r} is not in the table")
        column = validity
    if column is None:
        return labelled, ok, "status == ok"
    v = table[column].to_numpy(np.float64)
    known = v[ok & np.isfinite(v)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError(f"validity column {column!r} must hold 0/1 values")
    return labelled, ok & (np.nan_to_num(v, nan=0.0) == 1.0), f"status == ok and {column} == 1"


def _standardised_targets(model: Surrogate, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mask = np.isfinite(y)
    y_f = np.where(mask, y, 1.0)
    z = model.to_modelled(torch.as_tensor(y_f, dtype=torch.float64))
    return torch.where(torch.as_tensor(mask), z, torch.zeros_like(z)), torch.as_tensor(mask)


def _beta_nll(
    mu: torch.Tensor, var: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-member masked beta-NLL ``[M]``."""
    nll = 0.5 * (torch.log(var) + (y - mu) ** 2 / var)
    if beta > 0:
        nll = nll * var.detach() ** beta
    m = mask.to(nll.dtype)
    return (nll * m).sum(dim=(-1, -2)) / m.sum(dim=(-1, -2)).clamp(min=1.0)


def _fit_members(
    net: torch.nn.Module,
    loss_fn: Any,
    n_train: int,
    val_loss_fn: Any,
    cfg: TrainConfig,
    members: int,
    generator: torch.Generator,
    label: str,
    progress: bool,
) -> dict[str, Any]:
    """Mini-batch AdamW on all members at once, each early-stopped on its own val loss."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    best = [p.detach().clone() for p in net.parameters()]
    best_loss = torch.full((members,), float("inf"))
    best_epoch = torch.zeros(members, dtype=torch.long)
    active = torch.ones(members, dtype=torch.bool)
    history: list[list[float]] = []
    bs = min(cfg.batch_size, n_train)
    n_batches = max(1, n_train // bs)
    bar = tqdm(range(cfg.max_epochs), desc=label, disable=not progress, leave=False)
    epoch = 0
    for epoch in bar:
        perm = torch.stack([torch.randperm(n_train, generator=generator) for _ in range(members)])
        for b in range(n_batches):
            idx = perm[:, b * bs : (b + 1) * bs]
            loss = loss_fn(idx)  # [M]
            opt.zero_grad(set_to_none=True)
            (loss * active.double()).sum().backward()
            opt.step()
        with torch.no_grad():
            val = val_loss_fn()
        history.append(val.tolist())
        improved = (val < best_loss - 1e-6) & active
        if improved.any():
            for p, bp in zip(net.parameters(), best, strict=True):
                bp[improved] = p.detach()[improved]
            best_loss = torch.where(improved, val, best_loss)
            best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
        active &= (epoch - best_epoch) < cfg.patience
        bar.set_postfix(val=f"{float(best_loss.mean()):.4f}", active=int(active.sum()))
        if not active.any():
            break
    bar.close()
    with torch.no_grad():
        for p, bp in zip(net.parameters(), best, strict=True):
            p.copy_(bp)
    return {
        "epochs": epoch + 1,
        "best_epoch": best_epoch.tolist(),
        "best_val_loss": best_loss.tolist(),
        "val_curve": history,
    }


def calibration_factors(model: Surrogate, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Per-output variance scale: mean squared standardised residual on ``(x, y)``.

    Computed with the model's current calibration set to 1. Outputs without finite values
    keep the factor 1.
    """
    model.set_calibration([1.0] * len(model.outputs))
    with torch.no_grad():
        mu, alea, epi = model.predict_standardised(torch.as_tensor(x, dtype=torch.float64))
        z, mask = _standardised_targets(model, y)
        r2 = (z - mu) ** 2 / (alea + epi)
    factors = []
    for j in range(r2.shape[1]):
        m = mask[:, j]
        factors.append(float(r2[m, j].mean()) if int(m.sum()) >= 5 else 1.0)
    return factors


def train_surrogate(
    dataset: Any,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a deep-ensemble surrogate and validity classifier on ``dataset``.

    :param dataset: A :class:`~accelrl.surrogates.dataset.Dataset` (``spec``, ``table``).
    :param config: Training settings (default :class:`TrainConfig`).
    :param progress: Show progress bars.
    :raises ValueError: If the dataset has too few usable rows or outputs.
    """
    cfg = config or TrainConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    spec = dataset.spec
    table = dataset.table.reset_index(drop=True)
    status = table["status"].astype(str).to_numpy()
    ok = status == "ok"
    if ok.sum() < 10:
        raise ValueError(f"dataset {spec.name!r} has {int(ok.sum())} ok rows; need >= 10")
    split = split_rows(len(table), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    train_ok = split.train[ok[split.train]]
    val_ok = split.val[ok[split.val]]
    if len(train_ok) < 5 or len(val_ok) < 2:
        raise ValueError(f"too few ok rows to train ({len(train_ok)}) and validate ({len(val_ok)})")

    names = cfg.outputs
    if names is None:
        names = choose_outputs(table, spec.output_names, cfg.min_finite, train_ok)
    else:
        unknown = [n for n in names if n not in spec.output_names]
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; available: {spec.output_names}")
    if not names:
        raise ValueError("no output has enough finite values to be modelled")
    units = {o.name: o.unit for o in spec.outputs}
    outputs = []
    for n in names:
        v = table.loc[train_ok, n].to_numpy(np.float64)
        transform = choose_transform(n, v, cfg.log_outputs)
        fv = v[np.isfinite(v)]
        t = np.log(fv) if transform == "log" else fv
        outputs.append(
            OutputInfo(
                name=n,
                unit=units[n],
                transform=transform,
                loc=float(t.mean()),
                scale=float(t.std() or 1.0),
            )
        )
    inputs = [
        InputInfo(name=i.name, unit=i.unit, low=i.low, high=i.high, scale=i.scale)
        for i in spec.inputs
    ]
    labelled, valid, label_name = validity_labels(table, cfg.validity)
    has_classifier = bool((labelled & ~valid)[split.train].any())
    model = Surrogate(
        inputs, outputs, cfg.architecture, has_classifier=has_classifier, seed=cfg.seed
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    X = np.array(table[spec.input_names].to_numpy(np.float64))
    Y = np.array(table[names].to_numpy(np.float64))
    with torch.no_grad():
        U = model.normalise(torch.as_tensor(X, dtype=torch.float64))
    Z, M = _standardised_targets(model, Y)
    members = cfg.architecture.members

    u_tr, z_tr, m_tr = U[train_ok], Z[train_ok], M[train_ok]
    u_va, z_va, m_va = U[val_ok], Z[val_ok], M[val_ok]

    def reg_loss(idx: torch.Tensor) -> torch.Tensor:
        mu, var = model.member_outputs(u_tr[idx], normalised=True, per_member=True)
        return _beta_nll(mu, var, z_tr[idx], m_tr[idx], cfg.beta)

    def reg_val() -> torch.Tensor:
        mu, var = model.member_outputs(u_va, normalised=True)
        return _beta_nll(mu, var, z_va.expand_as(mu), m_va.expand_as(mu), 0.0)

    history: dict[str, Any] = {
        "regressor": _fit_members(
            model.regressor,
            reg_loss,
            len(train_ok),
            reg_val,
            cfg,
            members,
            gen,
            "regressor",
            progress,
        )
    }

    if has_classifier:
        c_tr = split.train[labelled[split.train]]
        c_va = split.val[labelled[split.val]]
        lab = torch.as_tensor(valid.astype(np.float64))
        bce = torch.nn.BCEWithLogitsLoss(reduction="none")

        def cls_loss(idx: torch.Tensor) -> torch.Tensor:
            rows = torch.as_tensor(c_tr)[idx]
            logit = model.classifier(U[rows])[..., 0]
            return bce(logit, lab[rows]).mean(-1)

        def cls_val() -> torch.Tensor:
            rows = torch.as_tensor(c_va)
            logit = model.classifier(U[rows])[..., 0]
            return bce(logit, lab[rows].expand_as(logit)).mean(-1)

        history["classifier"] = _fit_members(
            model.classifier,
            cls_loss,
            len(c_tr),
            cls_val,
            cfg,
            members,
            gen,
            "classifier",
            progress,
        )

    factors = calibration_factors(model, X[val_ok], Y[val_ok])
    model.set_calibration(factors)
    history["calibration"] = dict(zip(names, factors, strict=True))
    model.provenance.update(
        {
            "dataset": spec.name,
            "rows": int(len(table)),
            "status_counts": {s: int((status == s).sum()) for s in ("ok", "no_beam", "failed")},
            "validity": label_name,
            "valid_fraction": float(valid[labelled].mean()) if labelled.any() else None,
            "split_sizes": {
                "train": int(len(split.train)),
                "val": int(len(split.val)),
                "test": int(len(split.test)),
            },
            "train_config": cfg.model_dump(),
            "calibration": history["calibration"],
            "output_ranges": {
                n: [float(np.nanquantile(Y[train_ok, j], q)) for q in (0.0, 0.05, 0.5, 0.95, 1.0)]
                for j, n in enumerate(names)
            },
            "simulator_s_per_run": float(np.nanmean(table["wall_time_s"].to_numpy(np.float64)))
            if "wall_time_s" in table
            else None,
        }
    )
    model.eval()
    return TrainResult(model, split, history, time.perf_counter() - t0)
