"""The ``accelrl surrogates`` commands (a typer app, registered in :mod:`accelrl.cli`).

``accelrl surrogates generate SPEC [--workers N] [--out PATH] [--limit n] [--dask ADDR]``
    Runs the Sobol design of a dataset spec through its simulator (Wake-T or FBPIC) and
    writes ``<name>.parquet`` + ``<name>.meta.json`` (default: into ``runs/surrogates/``,
    never over the shipped datasets). A dataset already at ``--out`` is refused unless
    ``--resume`` (run only the samples not yet in the table; refused when the table's
    sidecar holds a different spec, or there is no sidecar) or ``--force`` (start over).
    Ctrl-C or SIGTERM keeps every finished run and leaves no worker process.

The standalone entry point for a machine without the full ``accelrl`` command line:
``python -m accelrl.cli.surrogates generate SPEC ...``.

``accelrl surrogates train SPEC --out DIR``
    Trains a deep-ensemble surrogate (weights, ONNX export, validation report).
``accelrl surrogates resimulate ...``
    Runs one setting through the simulator and compares it with the surrogate.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from accelrl.cli.common import command_group
from accelrl.cli.options import finite

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


surrogates_app = command_group(
    "Plasma-accelerator simulation datasets (Wake-T, FBPIC) and surrogate models."
)


def dask_available() -> bool:
    """Whether ``dask.distributed`` (the ``[cluster]`` extra) is installed."""
    return importlib.util.find_spec("distributed") is not None


@surrogates_app.callback()
def _surrogates() -> None:
    """Plasma-accelerator simulation datasets (Wake-T, FBPIC) and surrogate models."""


@surrogates_app.command("generate")
def generate_command(
    spec: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Dataset spec YAML (surrogates/*.yaml).",
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, help="Worker processes (default: CPU count)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Table path (.parquet) or folder; default: runs/surrogates/<name>.parquet.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=0, help="Run at most this many of the remaining samples."),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Dask scheduler address (e.g. tcp://10.0.0.1:8786), or 'local' for a local "
            "Dask cluster with --workers workers; default: a local process pool.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0,
            callback=finite("--timeout", low=0.0, unit="s"),
            help="Wall-time limit of one run [s] (0: none).",
        ),
    ] = 600.0,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", min=1, help="Write the table every N runs.")
    ] = 16,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Rerun samples whose row is 'failed'.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the dataset at --out (same spec required): run its missing samples.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the dataset at --out (start over).")
    ] = False,
) -> None:
    """Generate (or resume) a simulation dataset from a spec."""
    from accelrl.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated
    from accelrl.surrogates.dataset import DatasetError
    from accelrl.surrogates.generate import generate
    from accelrl.surrogates.spec import DatasetSpecError

    if resume and force:
        err_console.print("[bold red]error:[/] give --resume or --force, not both")
        raise typer.Exit(1)

    executor = None
    address = None
    if dask is not None:
        if not dask_available():
            err_console.print(
                "[bold red]error:[/] --dask needs dask.distributed, which is not installed: "
                "pip install 'accelrl\\[cluster]'",
                highlight=False,
            )
            raise typer.Exit(1)
        executor = "dask"
        address = None if dask == "local" else dask
    command = "accelrl surrogates generate " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    if not sys.argv[0].endswith("accelrl"):
        command = " ".join(shlex.quote(a) for a in sys.argv)
    try:
        report = generate(
            spec,
            out,
            workers=workers,
            executor=executor,
            dask_address=address,
            limit=limit,
            checkpoint_every=checkpoint_every,
            timeout_s=timeout or None,
            retry_failed=retry_failed,
            progress=progress,
            command=command,
            resume=resume,
            force=force,
        )
    except (DatasetSpecError, DatasetError, ValueError, ImportError) as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt as err:
        err_console.print(
            "[yellow]interrupted:[/] every finished run is in the table; run the same command "
            "with --resume to continue"
        )
        code = EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
        raise typer.Exit(code) from None
    counts = ", ".join(f"{k}={v}" for k, v in report.status_counts.items())
    console.print(
        f"{escape(str(report.table_path))}: {report.n_run} runs in {report.wall_time_s:.1f} s "
        f"({report.n_existing} rows kept); design {report.n_design}; {counts}"
    )


@surrogates_app.command("train", help="Train a deep-ensemble surrogate (weights, ONNX, report).")
def train_command(
    spec: Annotated[
        Path, typer.Argument(help="Dataset spec (surrogates/<dataset>.yaml); its table beside it.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder [default: runs/surrogates/models/<dataset>]."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a surrogate already in the output folder.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="YAML with TrainConfig fields (members, epochs, ...).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (split, weights, batches).")] = None,
    members: Annotated[int | None, typer.Option(help="Ensemble members.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Upper limit of epochs.")] = None,
    fidelity_check: Annotated[
        str | None,
        typer.Option(
            help="Dataset of the same design points at another fidelity (e.g. "
            "lpa_beamloading_hires): report how well each output is resolved."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a deep-ensemble surrogate, write the weights, ONNX export and validation report."""
    import torch

    from accelrl.config import load_yaml_mapping
    from accelrl.surrogates.dataset import load_dataset
    from accelrl.surrogates.models import (
        TrainConfig,
        export_onnx,
        onnx_parity,
        save_surrogate,
        train_surrogate,
        write_report,
    )
    from accelrl.surrogates.models.report import classifier_metrics
    from accelrl.surrogates.models.report import fidelity_check as check_fidelity
    from accelrl.surrogates.models.train import validity_labels

    torch.set_num_threads(threads)
    ds = load_dataset(spec)
    data = load_yaml_mapping(config, ValueError, "training config") if config else {}
    if seed is not None:
        data["seed"] = seed
    if max_epochs is not None:
        data["max_epochs"] = max_epochs
    if members is not None:
        data.setdefault("architecture", {})["members"] = members
    try:
        cfg = TrainConfig.model_validate(data)
    except Exception as err:  # pydantic names the field and the value
        raise typer.BadParameter(str(err)) from None
    from accelrl.runs import OutputFolderError, prepare_output

    out_dir = out or Path("runs") / "surrogates" / "models" / ds.name
    try:
        prepare_output(out_dir, force=force, owned=("surrogate.*", "report", "report/*"))
    except OutputFolderError as err:
        raise typer.BadParameter(str(err), param_hint="'--out'") from None
    counts = ds.status_counts()
    typer.echo(f"dataset {ds.name}: {len(ds.table)} rows {counts}")
    result = train_surrogate(ds, cfg, progress=progress)
    model = result.model
    table = ds.table.reset_index(drop=True)
    test = table.iloc[result.split.test]
    test_ok = test[test["status"] == "ok"]
    labelled_mask, valid, _ = validity_labels(table, cfg.validity)
    test_idx = result.split.test[labelled_mask[result.split.test]]
    save_surrogate(model, out_dir)
    onnx_path = export_onnx(model, out_dir / "surrogate.onnx")
    parity = onnx_parity(model, onnx_path)
    extra: dict = {}
    if fidelity_check:
        other = load_dataset(fidelity_check)
        fid = check_fidelity(
            table,
            other.table,
            model.output_names,
            {o.name: o.transform for o in model.outputs},
        )
        fid.update(low=ds.spec.fidelity_label, high=other.spec.fidelity_label)
        extra["fidelity_check"] = fid
    metrics = write_report(
        model,
        test_ok[model.input_names].to_numpy(),
        test_ok[model.output_names].to_numpy(),
        out_dir / "report",
        classifier=classifier_metrics(
            model, table.iloc[test_idx][model.input_names].to_numpy(), valid[test_idx]
        ),
        extra={
            "onnx_parity_max_rel": parity,
            "train_wall_s": result.wall_s,
            "epochs": {k: v["epochs"] for k, v in result.history.items() if "epochs" in v},
            "split": result.split.to_dict(),
            **extra,
        },
    )
    model.provenance["test_metrics"] = {
        n: {k: m.get(k) for k in ("r2", "median_rel_error", "coverage95", "flag")}
        for n, m in metrics["outputs"].items()
    }
    save_surrogate(model, out_dir)
    typer.echo((out_dir / "report" / "report.md").read_text())
    typer.echo(
        f"ONNX parity (torch vs onnxruntime, max rel. diff of mean/std, abs. of p_valid): "
        f"{parity:.2e}"
    )
    typer.echo(f"wrote {out_dir}")


def _parse_setting(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise typer.BadParameter(f"setting {text!r}: expected name=value[,name=value...]")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise typer.BadParameter(f"setting {text!r}: {v!r} is not a number") from None
    return out


@surrogates_app.command(
    "resimulate", help="Re-simulate settings in the real code and compare with the surrogate."
)
def resimulate_command(
    model: Annotated[str, typer.Argument(help="Surrogate folder or dataset name.")],
    setting: Annotated[
        list[str] | None,
        typer.Option(help="name=value,... (SI); repeat for several; missing inputs: midpoint."),
    ] = None,
    settings_json: Annotated[
        Path | None, typer.Option(help="JSON list of {name: value} settings.")
    ] = None,
    test_rows: Annotated[
        int, typer.Option(help="Also re-run this many held-out test rows of the dataset.")
    ] = 0,
    spec: Annotated[
        Path | None, typer.Option(help="Dataset spec [default: surrogates/<dataset>.yaml].")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the comparison as JSON.")] = None,
    timeout_s: Annotated[
        float | None,
        typer.Option(
            callback=finite("--timeout-s", low=0.0, low_open=True, unit="s"),
            help="Limit per run [s].",
        ),
    ] = None,
) -> None:
    """Re-simulate settings in the real code and compare with the surrogate (mean, 95%)."""
    import numpy as np

    from accelrl.surrogates.dataset import default_data_dirs, load_dataset, resolve_table_path
    from accelrl.surrogates.models import load_surrogate, resolve_model_dir
    from accelrl.surrogates.models.resimulate import resimulate as run
    from accelrl.surrogates.spec import DatasetSpec

    try:
        sur = load_surrogate(model)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from None
    dataset = sur.provenance.get("dataset")
    if spec is not None:
        ds_spec = DatasetSpec.from_yaml(spec)
    else:
        candidates = [d / f"{dataset}.yaml" for d in default_data_dirs()]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise typer.BadParameter(
                f"no spec for dataset {dataset!r}; tried {[str(c) for c in candidates]}; "
                "pass --spec"
            )
        ds_spec = DatasetSpec.from_yaml(found[0])
    mid = dict(zip(sur.input_names, sur.bounds.mean(1), strict=True))
    todo: list[dict[str, float]] = []
    for text in setting or []:
        s = _parse_setting(text)
        unknown = sorted(set(s) - set(sur.input_names))
        if unknown:
            raise typer.BadParameter(f"unknown inputs {unknown}; inputs: {sur.input_names}")
        todo.append({**mid, **s})
    if settings_json is not None:
        for s in json.loads(settings_json.read_text()):
            todo.append({**mid, **{k: float(v) for k, v in s.items()}})
    if test_rows:
        report = json.loads((resolve_model_dir(model) / "report" / "report.json").read_text())
        ds = load_dataset(resolve_table_path(dataset))
        rows = ds.table.reset_index(drop=True).iloc[report["split"]["test"][:test_rows]]
        todo += rows[sur.input_names].to_dict(orient="records")
    if not todo:
        raise typer.BadParameter("give --setting, --settings-json or --test-rows")

    def show(i: int, rec: dict) -> None:
        typer.echo(
            f"[{i + 1}/{len(todo)}] {rec['status']} p_valid={rec['p_valid']:.2f} "
            f"wall={rec['wall_time_s']:.1f}s inside95={rec['inside_fraction']}"
        )
        for name, o in rec["outputs"].items():
            if np.isfinite(o["simulated"]):
                mark = "in " if o["inside95"] else "OUT"
                typer.echo(
                    f"    {mark} {name:22s} sim {o['simulated']:.4g}  surrogate {o['mean']:.4g} "
                    f"[{o['low95']:.4g}, {o['high95']:.4g}]"
                )

    records = run(sur, ds_spec, todo, timeout_s=timeout_s, on_result=show)
    fracs = [r["inside_fraction"] for r in records if r["inside_fraction"] is not None]
    typer.echo(
        f"{len(records)} runs; mean fraction of outputs inside the 95% interval: "
        f"{np.mean(fracs) if fracs else float('nan'):.3f}"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=2, default=float) + "\n")
        typer.echo(f"wrote {out}")


if __name__ == "__main__":
    surrogates_app()
