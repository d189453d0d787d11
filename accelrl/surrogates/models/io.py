"""Saving, loading and ONNX export of surrogates.

A surrogate directory (``surrogates/models/<dataset>/``) holds

``surrogate.json``
    Inputs (bounds, scale), outputs (transform, standardisation, calibration), network shape
    and provenance (dataset, split sizes, training settings, metrics).
``surrogate.pt``
    The weights (``state_dict``, float64).
``surrogate.onnx``
    Single-file ONNX export: input ``x [B, d]`` float64 (SI), outputs ``mean [B, k]``,
    ``std [B, k]`` (SI) and ``p_valid [B]``; runs with onnxruntime alone.
``report/``
    The validation report (:mod:`accelrl.surrogates.models.report`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from accelrl.surrogates.models.ensemble import Surrogate

CONFIG_FILE = "surrogate.json"
WEIGHTS_FILE = "surrogate.pt"
ONNX_FILE = "surrogate.onnx"


def save_surrogate(model: Surrogate, directory: str | Path) -> Path:
    """Write ``surrogate.json`` and ``surrogate.pt`` into ``directory`` (created)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG_FILE).write_text(json.dumps(model.config(), indent=2, default=float) + "\n")
    torch.save(model.state_dict(), d / WEIGHTS_FILE)
    return d


def models_dirs() -> list[Path]:
    """Folders searched for a surrogate given by dataset name: ``models/`` under each of
    :func:`accelrl.surrogates.dataset.default_data_dirs`."""
    from accelrl.surrogates.dataset import default_data_dirs

    return [d / "models" for d in default_data_dirs()]


def resolve_model_dir(path_or_name: str | Path) -> Path:
    """The directory of a surrogate given by path or by dataset name.

    :raises FileNotFoundError: Listing the places tried.
    """
    p = Path(path_or_name)
    if (p / CONFIG_FILE).exists():
        return p
    tried = [p]
    for d in models_dirs():
        if (d / str(path_or_name) / CONFIG_FILE).exists():
            return d / str(path_or_name)
        tried.append(d / str(path_or_name))
    raise FileNotFoundError(
        f"no surrogate {str(path_or_name)!r} ({CONFIG_FILE}); tried "
        + ", ".join(str(t) for t in tried)
    )


def load_surrogate(path_or_name: str | Path) -> Surrogate:
    """Load a surrogate from its directory or by dataset name (e.g. ``"lpa_beamloading"``)."""
    d = resolve_model_dir(path_or_name)
    model = Surrogate.from_config(json.loads((d / CONFIG_FILE).read_text()))
    state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model


def export_onnx(model: Surrogate, path: str | Path, opset: int = 17) -> Path:
    """Export ``model`` as one ONNX file (float64, dynamic batch).

    :param path: Output file (``.onnx``).
    :param opset: ONNX opset.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.as_tensor(model.bounds.mean(1)[None], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["mean", "std", "p_valid"],
            dynamic_axes={
                "x": {0: "batch"},
                "mean": {0: "batch"},
                "std": {0: "batch"},
                "p_valid": {0: "batch"},
            },
            opset_version=opset,
        )
    import onnx

    proto = onnx.load(str(path))
    meta = {
        "input_names": json.dumps(model.input_names),
        "output_names": json.dumps(model.output_names),
        "units": json.dumps({i.name: i.unit for i in [*model.inputs, *model.outputs]}),
        "bounds": json.dumps(model.bounds.tolist()),
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    return path


def onnx_parity(model: Surrogate, path: str | Path, n: int = 512, seed: int = 0) -> float:
    """Largest difference between torch and onnxruntime on ``n`` random inputs inside the
    bounds: relative for ``mean`` and ``std``, absolute for the probability ``p_valid`` (a
    relative difference of probabilities ~1e-12 measures only rounding)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    b = model.bounds
    x = b[:, 0] + rng.random((n, len(b))) * (b[:, 1] - b[:, 0])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        diff = np.abs(g.astype(np.float64) - w)
        if i < 2:  # mean, std: relative
            diff = diff / np.maximum(np.abs(w), 1e-300)
        worst = max(worst, float(diff.max()))
    return worst
