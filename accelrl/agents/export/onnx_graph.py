"""The ONNX graph of a portable MLP policy, written op by op.

The graph computes exactly what :class:`accelrl.agents.policy.MLPPolicy` computes, in
float64, for a batch of raw flat observations ``x`` ``[N, 8 + K]``::

    z = clip((x - obs_mean) / obs_std, -c, c)
    if error_scale:  z = concat(z, clip((x[:, :4] - x[:, 4 + K:]) / error_scale, -c, c))
    h = act(z W1^T + b1) ... ;  action = tanh(h Wn^T + bn) * action_scale

(``Sub, Div, Clip, Slice, Concat, Gemm, Relu/Tanh, Mul``; opset :data:`OPSET`). A policy
with history (input ``[N, 8 + K + H (4 + K)]``) has linear features instead of the first
three lines: ``z = clip(x A^T + c, -c, c)``, one ``Gemm`` and a ``Clip``
(:func:`accelrl.agents.policy.history_features`). Writing the
graph from the weights, instead of tracing the torch module, keeps the export independent of
the torch exporters (the ``torch.export``-based one needs onnxscript and trips on SB3's
action distributions; the TorchScript one is deprecated) and makes the graph the
deterministic action path by construction. Parity with the torch module is tested.

This module needs numpy and onnx (not torch, not onnxruntime).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from accelrl.bundle import INPUT_NAME, OUTPUT_NAME

#: Opset of the default ONNX domain used by the graph.
OPSET = 17
#: IR version written (readable by onnxruntime >= 1.15).
IR_VERSION = 8


@dataclass(frozen=True)
class MLPWeights:
    """Weights and pre/post-processing of a portable MLP policy (float64, SI).

    :param weights: ``(W [out, in], b [out])`` per Linear layer, input to output.
    :param activation: Hidden activation, ``"relu"`` or ``"tanh"`` (the output is ``tanh``).
    :param obs_mean: Subtracted from the raw observation ``[8 + K]`` (SI).
    :param obs_std: Divides the centred observation ``[8 + K]`` (SI).
    :param obs_clip: Normalised inputs are clipped to ``+-obs_clip``.
    :param action_scale: Multiplies the ``tanh`` output ``[K]`` (SI).
    :param error_scale: If set, ``(beam - target) / error_scale`` [m] is an extra input.
    :param features: For a policy with history: ``(A [F, n_input], c [F])``, the features
        ``clip(A x + c)`` that replace the normalisation above.
    """

    weights: tuple[tuple[np.ndarray, np.ndarray], ...]
    activation: str
    obs_mean: np.ndarray
    obs_std: np.ndarray
    obs_clip: float
    action_scale: np.ndarray
    error_scale: float | None = None
    features: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_input(self) -> int:
        """Width of the graph's input."""
        return len(self.obs_mean) if self.features is None else self.features[0].shape[1]

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {self.activation!r}")
        n_obs, n_act = len(self.obs_mean), len(self.action_scale)
        if n_obs != 8 + n_act or len(self.obs_std) != n_obs:
            raise ValueError(f"inconsistent sizes: {n_obs} observations, {n_act} actions")
        if not np.all(np.asarray(self.obs_std) > 0):
            raise ValueError("obs_std must be > 0")
        width = n_obs + (4 if self.error_scale else 0)
        if self.features is not None:
            A, c = self.features
            if A.ndim != 2 or c.shape != (A.shape[0],) or (A.shape[1] - n_obs) % (4 + n_act):
                raise ValueError(f"features: shapes {A.shape}, {c.shape} do not fit")
            width = A.shape[0]
        for i, (w, b) in enumerate(self.weights):
            if w.shape[1] != width or b.shape != (w.shape[0],):
                raise ValueError(f"layer {i}: shapes {w.shape}, {b.shape} do not chain")
            width = w.shape[0]
        if width != n_act:
            raise ValueError(f"last layer has {width} outputs, the action {n_act}")


def _const(name: str, value: np.ndarray | float | Sequence[int]) -> TensorProto:
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
    return numpy_helper.from_array(arr, name)


def build_graph(weights: MLPWeights, metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of ``weights`` (checked by :func:`onnx.checker.check_model`).

    :param weights: The policy.
    :param metadata: ``metadata_props`` to embed (string key -> string value).
    """
    n_obs, n_act = weights.n_input, len(weights.action_scale)
    clip = float(weights.obs_clip)
    inits = [
        _const("obs_mean", weights.obs_mean),
        _const("obs_std", weights.obs_std),
        _const("clip_low", -clip),
        _const("clip_high", clip),
        _const("action_scale", weights.action_scale),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "obs_mean"], ["centred"], name="centre"),
        helper.make_node("Div", ["centred", "obs_std"], ["scaled"], name="scale"),
        helper.make_node("Clip", ["scaled", "clip_low", "clip_high"], ["z_obs"], name="clip_obs"),
    ]
    z = "z_obs"
    if weights.features is not None:
        A, c = weights.features
        inits = [
            _const("feature_matrix", A),
            _const("feature_offset", c),
            _const("clip_low", -clip),
            _const("clip_high", clip),
            _const("action_scale", weights.action_scale),
        ]
        nodes = [
            helper.make_node(
                "Gemm", [INPUT_NAME, "feature_matrix", "feature_offset"], ["features"],
                transB=1, name="features",
            ),
            helper.make_node("Clip", ["features", "clip_low", "clip_high"], ["z"], name="clip"),
        ]  # fmt: skip
        z = "z"
    elif weights.error_scale:
        inits += [
            _const("beam_start", np.array([0], np.int64)),
            _const("beam_end", np.array([4], np.int64)),
            _const("target_start", np.array([4 + n_act], np.int64)),
            _const("target_end", np.array([8 + n_act], np.int64)),
            _const("axis1", np.array([1], np.int64)),
            _const("error_scale", float(weights.error_scale)),
        ]
        nodes += [
            helper.make_node(
                "Slice", [INPUT_NAME, "beam_start", "beam_end", "axis1"], ["beam"], name="beam"
            ),
            helper.make_node(
                "Slice",
                [INPUT_NAME, "target_start", "target_end", "axis1"],
                ["target"],
                name="target",
            ),
            helper.make_node("Sub", ["beam", "target"], ["error"], name="error"),
            helper.make_node("Div", ["error", "error_scale"], ["error_n"], name="error_scale"),
            helper.make_node(
                "Clip", ["error_n", "clip_low", "clip_high"], ["z_error"], name="clip_error"
            ),
            helper.make_node("Concat", ["z_obs", "z_error"], ["z"], axis=1, name="features"),
        ]
        z = "z"
    act_op = {"relu": "Relu", "tanh": "Tanh"}[weights.activation]
    last = len(weights.weights) - 1
    for i, (w, b) in enumerate(weights.weights):
        inits += [_const(f"W{i}", w), _const(f"b{i}", b)]
        nodes.append(
            helper.make_node("Gemm", [z, f"W{i}", f"b{i}"], [f"y{i}"], transB=1, name=f"linear{i}")
        )
        out = "squashed" if i == last else f"h{i}"
        nodes.append(
            helper.make_node("Tanh" if i == last else act_op, [f"y{i}"], [out], name=f"act{i}")
        )
        z = out
    nodes.append(
        helper.make_node("Mul", ["squashed", "action_scale"], [OUTPUT_NAME], name="rescale")
    )
    graph = helper.make_graph(
        nodes,
        "accelrl_policy",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.DOUBLE, ["batch", n_obs])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DOUBLE, ["batch", n_act])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="accelrl",
        ir_version=IR_VERSION,
    )
    model.doc_string = (
        "Raw observation [beam (4) m, magnets (K) SI, target (4) m] -> physical action (SI); "
        "normalisation and scaling inside; deterministic."
    )
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model
