"""Running a policy bundle with onnxruntime: :class:`OnnxPolicy`.

Loading a bundle verifies it before anything can act on it: the manifest is validated, the
sha256 of every file is checked, the manifest embedded in the graph must equal
``manifest.json``, and the self-test (the source policy's reference actions) is replayed
-- any mismatch raises :class:`~accelrl.bundle.BundleError`.

The session runs on one thread, sequentially, with all graph optimisations. The batch-1
path (:meth:`OnnxPolicy.act_single`) writes the observation into a pre-bound input buffer and
reads the pre-bound output buffer (onnxruntime I/O binding), so a call allocates nothing but
the returned copy.

An :class:`OnnxPolicy` is an optimiser of the protocol (:mod:`accelrl.protocol`): the
machine controller and the evaluation drive it as they drive BO or Nelder-Mead. A bundle
with ``history`` H > 0 keeps the state the policy needs: :meth:`~OnnxPolicy.ask` and
:meth:`~OnnxPolicy.ask_batch` remember the episode's observations
(:class:`~accelrl.bundle.ObservationHistory`) and pass the last H to the graph; a bundle
with ``averaging`` averages the setting changes over noisy readings
(:class:`~accelrl.averaging.StepAverager`), and a bundle with ``target_size_floor`` is asked
for target sizes no smaller than it (:func:`~accelrl.bundle.floor_target_sizes`), exactly as
the torch policy does in evaluation;
:meth:`~OnnxPolicy.reset` and :meth:`~OnnxPolicy.reset_batch` start a new episode.
:meth:`~OnnxPolicy.act` and :meth:`~OnnxPolicy.act_single` take the graph's whole input
(``n_input`` values) and keep nothing.

>>> policy = OnnxPolicy("agents/apg-ares-ea/bundle")  # doctest: +SKIP
>>> # [beam (4) m, magnets (5) SI, target (4) m] -> change of each setting (SI)
>>> policy.act_single(observation)  # doctest: +SKIP
>>> policy.reset(problem); policy.ask(observation)  # next settings (SI)  # doctest: +SKIP

This module needs numpy and onnxruntime only (no torch, no onnx).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from accelrl.averaging import StepAverager
from accelrl.bundle import (
    METADATA_KEY,
    BundleError,
    Manifest,
    ObservationHistory,
    floor_target_sizes,
    read_manifest,
    read_selftest,
    verify_files,
)
from accelrl.protocol import Observation, ObservationBatch, Problem


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Session options for low-latency single-sample inference.

    :param threads: Intra- and inter-op threads (1: no thread-pool hand-offs).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


class OnnxPolicy:
    """A verified policy bundle, ready to act.

    :param bundle: Bundle directory (``policy.onnx``, ``manifest.json``, ``selftest.npz``).
    :param verify: Check hashes, the embedded manifest and the self-test (default; only
        turn off to inspect a broken bundle).
    :param threads: onnxruntime intra-/inter-op threads.
    :raises BundleError: If the bundle is incomplete, modified, or fails its self-test
        (the message names the file, or the self-test sample and component).
    """

    def __init__(self, bundle: str | Path, verify: bool = True, threads: int = 1) -> None:
        self.path = Path(bundle)
        self.manifest: Manifest = read_manifest(self.path)
        m = self.manifest
        if verify:
            verify_files(self.path, m)
        onnx_path = self.path / m.graph.file
        if not onnx_path.is_file():
            raise BundleError(f"{onnx_path} not found")
        try:
            self.session = ort.InferenceSession(
                str(onnx_path),
                sess_options=session_options(threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise BundleError(f"{onnx_path}: onnxruntime cannot load the graph: {err}") from err
        self._check_interface()
        if verify:
            self._check_embedded_manifest()
        self.n_obs, self.n_act = m.n_obs, m.n_act
        #: Width of the graph's input (``n_obs`` plus the history).
        self.n_input = m.n_input
        self.history = ObservationHistory(m.history, m.n_act)
        #: The averaging of the setting changes (a pass-through for bundles without it).
        self.averager = StepAverager.from_spec(
            m.averaging.model_dump() if m.averaging is not None else None
        )
        self._x1 = np.zeros((1, self.n_input), np.float64)
        self._shape1 = (self.n_input,)
        self._y1 = np.zeros((1, self.n_act), np.float64)
        self._binding = self.session.io_binding()
        self._binding.bind_input(
            m.graph.input, "cpu", 0, np.float64, list(self._x1.shape), self._x1.ctypes.data
        )
        self._binding.bind_output(
            m.graph.output, "cpu", 0, np.float64, list(self._y1.shape), self._y1.ctypes.data
        )
        # onnxruntime's Python wrapper re-validates on every call; where its C++ session and
        # binding are reachable, call them directly (same computation, ~2 us less).
        inner = getattr(self.session, "_sess", None)
        bound = getattr(self._binding, "_iobinding", None)
        if inner is not None and bound is not None and hasattr(inner, "run_with_iobinding"):
            options = ort.RunOptions()
            self._run_bound = lambda: inner.run_with_iobinding(bound, options)
        else:  # pragma: no cover - other onnxruntime builds
            self._run_bound = lambda: self.session.run_with_iobinding(self._binding)
        self.name = f"bundle:{self.path.name}"
        self._limits: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.selftest_max_error: np.ndarray | None = None
        if verify:
            self.selftest()

    # ------------------------------------------------------------------ checks
    def _check_interface(self) -> None:
        m = self.manifest
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [m.graph.input] or [o.name for o in outputs] != [
            m.graph.output
        ]:
            raise BundleError(
                f"graph interface {[i.name for i in inputs]} -> {[o.name for o in outputs]} "
                f"differs from the manifest's {m.graph.input!r} -> {m.graph.output!r}"
            )
        (inp,), (out,) = inputs, outputs
        if inp.type != "tensor(double)" or out.type != "tensor(double)":
            raise BundleError(f"graph must be float64 in and out, got {inp.type} -> {out.type}")
        if inp.shape[-1] != m.n_input or out.shape[-1] != m.n_act:
            raise BundleError(
                f"graph maps {inp.shape} -> {out.shape}; the manifest says "
                f"[N, {m.n_input}] -> [N, {m.n_act}]"
            )

    def _check_embedded_manifest(self) -> None:
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise BundleError(f"{self.manifest.graph.file} carries no embedded manifest")
        try:
            embedded = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise BundleError(f"embedded manifest is not valid JSON: {err}") from None
        if embedded != self.manifest.embedded():
            differing = sorted(
                k
                for k in set(embedded) | set(self.manifest.embedded())
                if embedded.get(k) != self.manifest.embedded().get(k)
            )
            raise BundleError(
                f"manifest.json differs from the manifest embedded in "
                f"{self.manifest.graph.file} in {differing}"
            )

    def selftest(self) -> np.ndarray:
        """Replay ``selftest.npz``; return the largest error per action component (SI).

        :raises BundleError: If any action differs from its reference by more than the
            manifest's ``selftest.atol`` (naming the worst sample and component), or the file
            is missing or malformed.
        """
        m = self.manifest
        path = self.path / m.selftest.file
        obs, ref = read_selftest(path)
        if obs.shape != (m.selftest.count, m.n_input) or ref.shape != (
            m.selftest.count,
            m.n_act,
        ):
            raise BundleError(
                f"{path}: shapes {obs.shape}, {ref.shape}; the manifest says "
                f"({m.selftest.count}, {m.n_input}), ({m.selftest.count}, {m.n_act})"
            )
        out = self.act(obs)
        err = np.abs(out - ref)
        err = np.where(np.isnan(out) & np.isnan(ref), 0.0, err)
        atol = np.asarray(m.selftest.atol)
        bad = ~(err <= atol)
        if bad.any():
            i, k = np.unravel_index(np.argmax(np.where(bad, err / atol, -1.0)), err.shape)
            raise BundleError(
                f"bundle {self.path} failed its self-test: {int(bad.sum())} of {err.size} "
                f"action values differ from the reference; worst: sample {i}, "
                f"{m.knob_names[k]}: {out[i, k]!r} vs {ref[i, k]!r} "
                f"(|error| {err[i, k]:.3g} > atol {atol[k]:.3g})"
            )
        self.selftest_max_error = err.max(axis=0)
        return self.selftest_max_error

    # ------------------------------------------------------------------ inference
    def act(self, observation: np.ndarray) -> np.ndarray:
        """Actions ``[N, K]`` (SI) for raw graph inputs ``[N, n_input]`` (or ``[n_input]`` ->
        ``[K]``; ``n_input = 8 + K`` without history).

        :raises ValueError: For a wrong observation size.
        """
        x = np.asarray(observation, np.float64)
        single = x.ndim == 1
        x2 = x.reshape(1, -1) if single else x
        if x2.ndim != 2 or x2.shape[1] != self.n_input:
            raise ValueError(f"observation must be [N, {self.n_input}], got shape {x.shape}")
        (y,) = self.session.run(None, {self.manifest.graph.input: np.ascontiguousarray(x2)})
        return y[0] if single else y

    def act_single(self, observation: np.ndarray) -> np.ndarray:
        """The batch-1 fast path: action ``[K]`` (SI, a new array) for one raw graph input
        ``[n_input]``.

        :raises ValueError: For a wrong observation size.
        """
        if getattr(observation, "shape", None) != self._shape1:  # lists, [1, 8 + K], ...
            x = np.asarray(observation, np.float64)
            if x.size != self.n_input:
                raise ValueError(
                    f"observation must have {self.n_input} values, got shape {x.shape}"
                )
            observation = x.reshape(-1)
        self._x1[0] = observation
        self._run_bound()
        return self._y1[0].copy()

    def model_input(self, beam: np.ndarray, magnets: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The raw flat graph input ``[beam (4) m, magnets (K) SI, target (4) m]`` (float64;
        batched inputs ``[N, .]`` give ``[N, 8 + K]``)."""
        return np.concatenate([np.asarray(v, np.float64) for v in (beam, magnets, target)], axis=-1)

    # ------------------------------------------------------------------ optimiser protocol
    def reset(self, problem: Problem) -> None:
        """Start a trial (:class:`~accelrl.protocol.Optimiser`).

        :raises BundleError: If the problem's actuators are not the bundle's knobs.
        """
        self.reset_batch([problem])

    def ask(self, observation: Observation) -> np.ndarray:
        """The next settings ``[K]`` (SI) through the batch-1 fast path: for a ``"delta"``
        bundle the setpoints (``observation.setpoints``, else ``magnets``) plus the action
        clipped to ``problem.max_delta``; for ``"direct"`` the action; both clipped to the
        problem's limits."""
        if self._limits is None:
            raise RuntimeError("call reset(problem) before ask()")
        target = floor_target_sizes(observation.target, self.manifest.target_size_floor)
        x = self.model_input(observation.beam, observation.magnets, target)
        if self.manifest.history:
            x = self.history.push(x[None])[0]
        base = observation.setpoints if observation.setpoints is not None else observation.magnets
        return self._settings(self.act_single(x), np.asarray(base, np.float64))[0]

    def reset_batch(self, problems: Sequence[Problem]) -> None:
        """Start ``N`` trials (:class:`~accelrl.protocol.BatchOptimiser`).

        :raises BundleError: If a problem's actuators are not the bundle's knobs.
        """
        for p in problems:
            if tuple(p.actuator_names) != self.manifest.knob_names:
                raise BundleError(
                    f"bundle knobs {self.manifest.knob_names} differ from the problem's "
                    f"actuators {tuple(p.actuator_names)}"
                )
        self._limits = tuple(  # type: ignore[assignment]
            np.stack([np.asarray(getattr(p, k), np.float64) for p in problems])
            for k in ("max_delta", "low", "high")
        )
        self.history.clear()
        self.averager.clear()

    def ask_batch(self, observations: ObservationBatch) -> np.ndarray:
        """The next settings ``[N, K]`` (SI) of ``N`` trials (see :meth:`ask`)."""
        if self._limits is None:
            raise RuntimeError("call reset_batch(problems) before ask_batch()")
        target = floor_target_sizes(observations.target, self.manifest.target_size_floor)
        x = self.model_input(observations.beam, observations.magnets, target)
        return self._settings(self.act(self.history.push(x)), observations.magnets)

    def _settings(self, action: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Settings ``[N, K]`` from actions and the settings they change (delta bundles),
        averaged as the manifest's ``averaging`` says."""
        assert self._limits is not None
        max_delta, low, high = self._limits
        action = action.reshape(1, -1) if action.ndim == 1 else np.atleast_2d(action)
        # ndarray.clip: np.clip's own computation, without its dispatch
        if self.manifest.action_mode == "delta":
            action = base + action.clip(-max_delta, max_delta)
        return self.averager.next_settings(base, action.clip(low, high), max_delta, low, high)

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"OnnxPolicy({str(self.path)!r}, env={m.env_id}, knobs={list(m.knob_names)}, "
            f"mode={m.action_mode}, history={m.history}, averaging={self.averager.spec})"
        )
