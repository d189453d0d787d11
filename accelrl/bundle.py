"""The policy bundle format: ``policy.onnx`` + ``manifest.json`` + ``selftest.npz``.

A bundle is a directory::

    policy.onnx     the policy: raw observation [N, 8 + K] (float64, SI) -> physical action
                    [N, K] (float64, SI); observation normalisation and action scaling are
                    inside the graph; one file, no external data; dynamic batch axis
    manifest.json   what the policy is (this module's :class:`Manifest`): environment, the
                    observation and action layout with names, units and limits, the action
                    mode, training provenance and the sha256 of every other file
    selftest.npz    ``observation`` [M, 8 + K] and the source policy's ``action`` [M, K],
                    replayed when the bundle is loaded

A policy that keeps state (``history`` H > 0 in the manifest, format version 2) takes
``[N, 8 + K + H (4 + K)]``: the current observation, then the ``beam`` and ``magnets``
parts of the H previous observations of the episode, newest first
(:class:`ObservationHistory` builds it; at an episode's first step the past is the first
observation repeated). The self-test holds such inputs.

The manifest is also embedded in ``policy.onnx`` as the metadata property
``accelrl.manifest`` -- without its ``files`` section (which holds the hash of
``policy.onnx`` itself). Loading checks that both copies agree, so a graph cannot be paired
with another policy's manifest.

This module needs numpy and pydantic only (no torch, no onnx).
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from accelrl.averaging import MAX_COUNT_LIMIT
from accelrl.config import format_validation_error

#: Value of :attr:`Manifest.format`.
BUNDLE_FORMAT = "accelrl-policy-bundle"
#: Current bundle format version (bumped on incompatible changes): 2 added ``history``,
#: 3 ``averaging`` and ``target_size_floor``.
BUNDLE_FORMAT_VERSION = 3
#: Most past observations a bundle may take.
MAX_HISTORY = 32
#: Largest ``target_size_floor`` a policy may have [m].
MAX_TARGET_SIZE_FLOOR = 1e-3
#: File names inside a bundle.
ONNX_FILE = "policy.onnx"
MANIFEST_FILE = "manifest.json"
SELFTEST_FILE = "selftest.npz"
#: ONNX metadata key holding the manifest (without ``files``).
METADATA_KEY = "accelrl.manifest"
#: Graph input and output names.
INPUT_NAME = "observation"
OUTPUT_NAME = "action"


class BundleError(ValueError):
    """A bundle is missing files, was modified, fails its self-test or does not fit a machine."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantity(_Model):
    """One component of the observation or the action.

    :param name: Name (e.g. ``"sigma_x"``, ``"Q1"``).
    :param unit: SI unit.
    :param group: ``"beam"``, ``"magnets"`` or ``"target"`` (observation), ``"action"``.
    :param low: Lower limit (SI); ``None`` when unbounded.
    :param high: Upper limit (SI); ``None`` when unbounded.
    """

    name: str = Field(min_length=1)
    unit: str = ""
    group: Literal["beam", "magnets", "target", "action"]
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Quantity:
        for side in ("low", "high"):
            v = getattr(self, side)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{self.name}: {side} must be finite or null, got {v}")
        if self.low is not None and self.high is not None and not self.low <= self.high:
            raise ValueError(f"{self.name}: low ({self.low}) above high ({self.high})")
        return self


class KnobLimits(_Model):
    """Absolute limits of a knob setting the policy was trained within (SI).

    The machine config's hard limits are intersected with these; they are never widened.
    """

    name: str = Field(min_length=1)
    unit: str = ""
    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> KnobLimits:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"knob {self.name}: need finite low < high, got {self.low, self.high}")
        return self


class GraphInfo(_Model):
    """The ONNX graph's interface.

    :param file: File name in the bundle.
    :param input: Input name (raw observation ``[N, 8 + K]``).
    :param output: Output name (physical action ``[N, K]``).
    :param dtype: Element type of input and output.
    :param opset: ONNX opset of the default domain.
    """

    file: str = ONNX_FILE
    input: str = INPUT_NAME
    output: str = OUTPUT_NAME
    dtype: Literal["float64"] = "float64"
    opset: int = Field(ge=7)


class SelftestInfo(_Model):
    """The reference inputs and outputs replayed at load.

    :param file: File name in the bundle.
    :param count: Number of reference observations.
    :param atol: Largest accepted ``|action - reference|`` per action component (SI).
    """

    file: str = SELFTEST_FILE
    count: int = Field(ge=1)
    atol: tuple[float, ...]


class AveragingInfo(_Model):
    """How the runtime averages the policy's setting changes (:mod:`accelrl.averaging`).

    :param max_count: Largest divisor of a change (>= 1).
    :param reset_fraction: Fraction of ``max_delta`` that one direction's summed proposals
        must exceed to be followed at full gain, in ``(0, 1]``.
    """

    max_count: StrictInt = Field(ge=1, le=MAX_COUNT_LIMIT)
    reset_fraction: float = Field(gt=0.0, le=1.0)

    @field_validator("reset_fraction", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"must be a number in (0, 1], got {v!r}")
        return v


class Manifest(_Model):
    """Everything a runtime needs to know about a bundle (``manifest.json``).

    :param format: Always :data:`BUNDLE_FORMAT`.
    :param format_version: :data:`BUNDLE_FORMAT_VERSION` of the writer.
    :param env_id: Environment the policy was trained on.
    :param env_version: Version suffix of ``env_id`` (``"v0"``).
    :param created: Export time (UTC, ISO 8601).
    :param source: What was exported (``"mlp-policy"``, ``"sb3-td3"``, ...).
    :param observation: Observation components in input order: beam (4, m), magnets (K, SI),
        target (4, m).
    :param action: Action components in output order (limits: the policy's output range).
    :param action_mode: ``"delta"`` (change of each setting) or ``"direct"`` (setting).
    :param knobs: Absolute setting limits per knob, in action order.
    :param target_thresholds: Default "target reached" thresholds on ``|beam - target|`` in
        observation order ``mu_x, sigma_x, mu_y, sigma_y`` [m].
    :param graph: The ONNX interface.
    :param selftest: The self-test data.
    :param provenance: Training recipe, seed, commit, package versions, evaluation.
    :param files: File name -> sha256 (hex) of every other file of the bundle.
    :param history: Past observations in the graph's input (0: none; > 0 needs format
        version 2): see the module documentation.
    :param averaging: Averaging of the setting changes by the runtime (``None``: none;
        needs format version 3).
    :param target_size_floor: Smallest target size the policy is asked for [m]
        (:func:`floor_target_sizes`; ``None``: the target as given; needs format version 3).
    """

    format: Literal["accelrl-policy-bundle"] = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION
    env_id: str = Field(min_length=1)
    env_version: str = ""
    created: str = ""
    source: str = ""
    observation: tuple[Quantity, ...]
    action: tuple[Quantity, ...]
    action_mode: Literal["delta", "direct"]
    knobs: tuple[KnobLimits, ...]
    target_thresholds: tuple[float, float, float, float]
    graph: GraphInfo
    selftest: SelftestInfo
    provenance: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    history: int = Field(0, ge=0, le=MAX_HISTORY)
    averaging: AveragingInfo | None = None
    target_size_floor: float | None = Field(
        None, ge=0.0, le=MAX_TARGET_SIZE_FLOOR, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.format_version > BUNDLE_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this runtime's "
                f"({BUNDLE_FORMAT_VERSION}); update accelrl"
            )
        if self.history and self.format_version < 2:
            raise ValueError(f"history = {self.history} needs format_version >= 2")
        if self.averaging is not None and self.format_version < 3:
            raise ValueError("averaging needs format_version >= 3")
        if self.target_size_floor is not None and self.format_version < 3:
            raise ValueError("target_size_floor needs format_version >= 3")
        k = len(self.action)
        groups = [q.group for q in self.observation]
        if groups != ["beam"] * 4 + ["magnets"] * k + ["target"] * 4:
            raise ValueError(
                f"observation must be beam (4), magnets ({k}), target (4) in that order; "
                f"got groups {groups}"
            )
        if any(q.group != "action" for q in self.action):
            raise ValueError("every action component must have group 'action'")
        knob_names = [q.name for q in self.action]
        if [q.name for q in self.knobs] != knob_names:
            raise ValueError(f"knobs {[q.name for q in self.knobs]} differ from the action's")
        if [q.name for q in self.observation[4 : 4 + k]] != knob_names:
            raise ValueError("observation magnets must be named as the action's knobs")
        if len(self.selftest.atol) != k:
            raise ValueError(f"selftest.atol needs {k} values, got {len(self.selftest.atol)}")
        if any(not (math.isfinite(t) and t > 0) for t in self.target_thresholds):
            raise ValueError(f"target_thresholds must be > 0 m, got {self.target_thresholds}")
        return self

    @property
    def knob_names(self) -> tuple[str, ...]:
        """Knob names in action order."""
        return tuple(q.name for q in self.action)

    @property
    def beam_names(self) -> tuple[str, ...]:
        """Names of the beam reading (``mu_x, sigma_x, mu_y, sigma_y``)."""
        return tuple(q.name for q in self.observation[:4])

    @property
    def n_obs(self) -> int:
        """Observation size ``8 + K``."""
        return len(self.observation)

    @property
    def n_input(self) -> int:
        """Width of the graph's input: ``8 + K + history (4 + K)``."""
        return self.n_obs + self.history * (4 + self.n_act)

    @property
    def n_act(self) -> int:
        """Action size ``K``."""
        return len(self.action)

    def _dump(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if not self.history:  # bundles without history read as they always did
            data.pop("history")
        for key in ("averaging", "target_size_floor"):  # nor do bundles without these
            if data[key] is None:
                data.pop(key)
        return data

    def embedded(self) -> dict[str, Any]:
        """The manifest as embedded in the graph (everything but ``files``)."""
        data = self._dump()
        data.pop("files")
        return data

    def to_json(self) -> str:
        """``manifest.json`` text (indented, keys in schema order)."""
        return json.dumps(self._dump(), indent=2) + "\n"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle: str | Path) -> Manifest:
    """Read and validate ``BUNDLE/manifest.json`` (no hashes checked).

    :raises BundleError: Naming the file and the problem.
    """
    path = Path(bundle) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} not found: {bundle} is not a policy bundle") from None
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON (truncated or modified?): {err}") from None
    except UnicodeDecodeError as err:
        raise BundleError(f"{path}: not UTF-8 text (truncated or modified?): {err}") from None
    except OSError as err:
        raise BundleError(f"{path}: cannot be read: {err}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        header = f"{path}: invalid manifest:"
        raise BundleError(format_validation_error(err, header, show_input=False)) from None


def verify_files(bundle: str | Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists exists and has its sha256, and that the
    graph and self-test files are listed.

    :raises BundleError: Naming each missing or modified file.
    """
    bundle = Path(bundle)
    problems = []
    for required in (manifest.graph.file, manifest.selftest.file):
        if required not in manifest.files:
            problems.append(f"{required}: not listed in the manifest's files")
    for name, expected in sorted(manifest.files.items()):
        path = bundle / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: file names must be relative to the bundle")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        else:
            actual = sha256_file(path)
            if actual != expected:
                problems.append(
                    f"{name}: sha256 {actual} differs from the manifest's {expected} "
                    "(modified after export)"
                )
    if problems:
        raise BundleError(f"bundle {bundle} failed verification:\n  " + "\n  ".join(problems))


def read_selftest(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The reference ``(observation, action)`` arrays of a ``selftest.npz`` (float64).

    :raises BundleError: Naming the file, when it is missing, truncated, not an ``.npz``
        archive, lacks either array or holds non-numeric data.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], np.float64) for k in data.files}
    except (zipfile.BadZipFile, EOFError) as err:
        raise BundleError(f"{path}: not a complete .npz archive (truncated?): {err}") from None
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise BundleError(f"{path}: cannot read the self-test data: {err}") from None
    missing = [k for k in ("observation", "action") if k not in arrays]
    if missing:
        raise BundleError(f"{path}: the self-test data lacks the arrays {missing}")
    return arrays["observation"], arrays["action"]


def check_target_size_floor(floor: float | None) -> None:
    """:raises ValueError: Unless ``floor`` is ``None`` or in ``[0,``
    :data:`MAX_TARGET_SIZE_FLOOR` ``]`` m."""
    if floor is not None and not (
        isinstance(floor, int | float | np.integer | np.floating)
        and not isinstance(floor, bool)
        and math.isfinite(floor)
        and 0.0 <= floor <= MAX_TARGET_SIZE_FLOOR
    ):
        raise ValueError(
            f"target_size_floor must be a number in [0, {MAX_TARGET_SIZE_FLOOR}] m or null, "
            f"got {floor!r}"
        )


def floor_target_sizes(target: np.ndarray, floor: float | None) -> np.ndarray:
    """The target a policy is asked for: its sizes (``sigma_x``, ``sigma_y``, columns 1 and 3
    of ``[..., 4]``, m) raised to at least ``floor`` [m]; ``None`` or 0: unchanged.

    A target size below what the optics make and the screen resolves (zero: "as small as
    possible") lies outside what a policy was trained to reach; asked for it, a policy may
    push the focusing to its limits and the beam away. The MAE is still judged against the
    true target.

    >>> floor_target_sizes(np.array([1e-3, 0.0, 0.0, 5e-4]), 2e-5).tolist()
    [0.001, 2e-05, 0.0, 0.0005]
    """
    target = np.asarray(target, np.float64)
    if not floor:
        return target
    out = target.copy()
    out[..., 1::2] = np.maximum(out[..., 1::2], floor)
    return out


class ObservationHistory:
    """The past observations a history policy sees, for a batch of episodes.

    :meth:`push` takes the current flat observations ``[N, 8 + K]`` and returns the
    policy's input ``[N, 8 + K + H (4 + K)]``: the observation, then the ``beam`` and
    ``magnets`` parts of the ``H`` previous ones, newest first. At the first step of an
    episode (after :meth:`clear`, or when the batch size changes) the past is filled with
    the first observation (no change since). With ``H = 0`` it returns the observations
    unchanged.

    :param history: ``H``, past observations kept (>= 0).
    :param n_act: ``K``, actuators.
    """

    def __init__(self, history: int, n_act: int) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history}")
        self.history = history
        self.width = 4 + n_act
        self._past: np.ndarray | None = None  # [N, H, 4 + K], newest first

    def clear(self) -> None:
        """Forget the past (a new episode)."""
        self._past = None

    def push(self, obs: np.ndarray) -> np.ndarray:
        """The policy's input for observations ``obs`` ``[N, 8 + K]``; remembers them."""
        if not self.history:
            return obs
        obs = np.asarray(obs, np.float64)
        now = obs[:, None, : self.width]
        if self._past is None or len(self._past) != len(obs):
            self._past = np.repeat(now, self.history, axis=1)
        full = np.concatenate([obs, self._past.reshape(len(obs), -1)], axis=1)
        self._past = np.concatenate([now, self._past[:, :-1]], axis=1)
        return full
