"""Surrogate quality and speed against the simulator, in one run.

Held-out R^2, median relative error and 95% interval coverage per output (the test split
recorded in the surrogate's report, never used in training, early stopping or calibration);
inference time at batch 1 through onnxruntime and at batch 4096 through torch, against the
measured wall time per simulator run of the dataset (``wall_time_s``), as a ratio.

Usage::

    .venv/bin/python benchmarks/surrogate.py [--model surrogates/models/lpa_beamloading]

Ends with one line of JSON: ``{"r2": {...}, "coverage95": {...}, "speedup_vs_simulator": ...,
"simulator_s_per_run": ..., "onnx_us_b1": ...}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from accelrl.surrogates.dataset import load_dataset
from accelrl.surrogates.models import evaluate, load_surrogate, resolve_model_dir

TARGETS = {"r2_min": 0.95, "coverage": (0.9, 0.98), "speedup_min": 1e4}
KEY_OUTPUTS = ("charge", "energy_mean", "energy_spread_rms")


def time_call(fn, repeat: int, warmup: int = 20) -> float:
    """Median wall time of ``fn()`` [s] over ``repeat`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lpa_beamloading", help="surrogate dir or name")
    parser.add_argument("--dataset", default=None, help="dataset (default: the model's)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model_dir = resolve_model_dir(args.model)
    model = load_surrogate(model_dir)
    report = json.loads((model_dir / "report" / "report.json").read_text())
    ds = load_dataset(args.dataset or model.provenance["dataset"])
    table = ds.table.reset_index(drop=True)
    test = table.iloc[report["split"]["test"]]
    test = test[test["status"] == "ok"]
    metrics = evaluate(
        model, test[model.input_names].to_numpy(), test[model.output_names].to_numpy()
    )["outputs"]

    wall = table["wall_time_s"].to_numpy(np.float64)
    wall = wall[np.isfinite(wall)]
    sim_s = float(wall.mean())

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        str(model_dir / "surrogate.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    b = model.bounds
    rng = np.random.default_rng(0)
    x1 = (b[:, 0] + rng.random((1, len(b))) * (b[:, 1] - b[:, 0])).astype(np.float64)
    onnx_b1 = time_call(lambda: sess.run(None, {"x": x1}), 2000)
    xb = torch.as_tensor(b[:, 0] + rng.random((4096, len(b))) * (b[:, 1] - b[:, 0]))
    with torch.no_grad():
        torch_b4096 = time_call(lambda: model(xb), 30, warmup=3)
    x1t = torch.as_tensor(x1)
    with torch.no_grad():
        torch_b1 = time_call(lambda: model(x1t), 500)
    per_sample = torch_b4096 / 4096

    print(
        f"surrogate {model_dir} ({model.members} members), dataset {ds.name}: "
        f"{len(table)} runs, {len(test)} held-out ok rows"
    )
    print(
        f"{'output':24s} {'R2':>8s} {'R2(model)':>9s} {'med.rel.err':>11s} {'cov95':>6s} "
        f"{'noise':>6s}  flag"
    )
    for name, m in metrics.items():
        if "r2" not in m:
            continue
        print(
            f"{name:24s} {m['r2']:8.4f} {m['r2_modelled']:9.4f} {m['median_rel_error']:11.4g} "
            f"{m['coverage95']:6.3f} {m['noise_fraction']:6.3f}  {m['flag']}"
        )
    fid = report.get("fidelity_check")
    if fid and fid.get("outputs"):
        print()
        print(
            f"resolution check: {fid['n_pairs']} design points at {fid['high']} vs "
            f"{fid['low']} (ratio² = (fidelity difference / design variation)²)"
        )
        for name, f in fid["outputs"].items():
            print(f"  {name:24s} ratio² {f['noise_ratio']:7.3f}")
    print()
    print(f"simulator (Wake-T) wall time per run: {sim_s:.2f} s (mean of {len(wall)} runs)")
    print(f"surrogate ONNX batch 1:      {onnx_b1 * 1e6:9.1f} us  -> {sim_s / onnx_b1:.3g}x")
    print(f"surrogate torch batch 1:     {torch_b1 * 1e6:9.1f} us  -> {sim_s / torch_b1:.3g}x")
    print(
        f"surrogate torch batch 4096:  {per_sample * 1e6:9.2f} us/sample "
        f"({torch_b4096 * 1e3:.1f} ms/batch) -> {sim_s / per_sample:.3g}x"
    )
    print()
    for name in KEY_OUTPUTS:
        if name in metrics and "r2" in metrics[name]:
            ok = metrics[name]["r2"] >= TARGETS["r2_min"]
            print(f"target R2 >= 0.95 for {name}: {'met' if ok else 'NOT met'}")
    covs = [m["coverage95"] for m in metrics.values() if "coverage95" in m]
    inside = sum(TARGETS["coverage"][0] <= c <= TARGETS["coverage"][1] for c in covs)
    print(f"coverage in [0.90, 0.98]: {inside}/{len(covs)} outputs")
    print(f"speed-up >= 1e4 (ONNX b1): {'met' if sim_s / onnx_b1 >= 1e4 else 'NOT met'}")
    result = {
        "r2": {n: round(m["r2"], 4) for n, m in metrics.items() if "r2" in m},
        "coverage95": {n: round(m["coverage95"], 3) for n, m in metrics.items() if "r2" in m},
        "median_rel_error": {
            n: float(f"{m['median_rel_error']:.3g}") for n, m in metrics.items() if "r2" in m
        },
        "speedup_vs_simulator": float(f"{sim_s / per_sample:.3g}"),
        "speedup_b1_onnx": float(f"{sim_s / onnx_b1:.3g}"),
        "simulator_s_per_run": round(sim_s, 3),
        "onnx_us_b1": round(onnx_b1 * 1e6, 1),
        "torch_us_per_sample_b4096": round(per_sample * 1e6, 3),
        "fidelity_noise_ratio": {
            n: round(f["noise_ratio"], 3) for n, f in (fid or {}).get("outputs", {}).items()
        },
        "n_test": int(len(test)),
        "n_runs": int(len(table)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
