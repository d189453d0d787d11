"""Generate a small Wake-T dataset, load it and re-simulate one setting.

Runs a 16-sample scrambled Sobol design of a 1 cm laser-plasma stage with an injected
witness bunch (Wake-T quasi-static 2D r-z model with laser-envelope evolution) on two
worker processes, resumably, into ``runs/surrogates_example/``; then loads the table, prints the
outputs of the settings that ran and re-simulates the best one in this process.

Needs the ``[surrogates]`` extra (Wake-T). The first run in a fresh environment compiles
Wake-T's numba kernels (about a minute per worker); a run then takes about a second.

    python examples/surrogates_generate.py
"""

from __future__ import annotations

from pathlib import Path

from accelrl.surrogates.dataset import load_dataset
from accelrl.surrogates.generate import generate
from accelrl.surrogates.simulators import make_simulator
from accelrl.surrogates.spec import DatasetSpec

OUT = Path("runs/surrogates_example")

# 1. The dataset spec: the shipped one, with a shorter stage and a smaller design.
shipped = DatasetSpec.from_yaml(
    Path(__file__).resolve().parents[1] / "surrogates/lpa_beamloading.yaml"
)
data = shipped.to_dict()
data["name"] = "lpa_beamloading_example"
data["fidelity"] = {**data["fidelity"], "stage_length": 0.01, "label": "wake-t/qs2d/res0.5/L0.01"}
data["design"] = {"method": "sobol", "n_samples": 16, "seed": 7}
spec = DatasetSpec.from_dict(data)


def main() -> None:
    # 2. Generate (a second call resumes: finished samples are not rerun).
    report = generate(spec, OUT, workers=2, checkpoint_every=4)
    print(f"{report.n_run} runs in {report.wall_time_s:.0f} s -> {report.table_path}")
    print("status:", report.status_counts)

    # 3. Load: inputs and outputs in SI units, one row per run.
    ds = load_dataset(report.table_path)
    ok = ds.ok()
    cols = ["sample", "beam_current_head", "beam_current_tail", "energy_median",
            "energy_spread_rms", "emittance_x", "charge"]  # fmt: skip
    print(ok[cols].to_string(index=False))

    # 4. Re-simulate the setting with the smallest energy spread.
    best = ok.loc[ok["energy_spread_rms"].idxmin()]
    setting = {name: float(best[name]) for name in ds.input_names}
    result = make_simulator(ds.spec).run(setting)
    print(
        f"sample {int(best['sample'])}: energy spread {result.outputs['energy_spread_rms']:.4f} "
        f"(table {best['energy_spread_rms']:.4f}), {result.wall_time_s:.1f} s"
    )


if __name__ == "__main__":
    main()
