"""``accelrl export``: a trained policy as a verified ONNX policy bundle.

Examples::

    accelrl export agents/apg-ares-ea --out runs/bundle          # --force to replace one
    accelrl export runs/td3_icml-0/model.zip --out runs/td3-bundle --trust-pickle

An SB3 model zip and its ``vecnormalize.pkl`` hold pickled Python objects: reading them
runs code named in the files, so an SB3 export needs ``--trust-pickle`` (only for files you
or your own training wrote). An MLPPolicy directory needs no such trust.

Heavy imports (torch, Stable-Baselines3, onnx) happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from accelrl.cli.common import EXIT_INVALID, console, fail, input_path


def export_command(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="MLPPolicy directory (policy.pt + policy.json) or SB3 model .zip.",
            callback=input_path,
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", file_okay=False, help="Bundle directory to write."),
    ],
    vecnormalize: Annotated[
        Path | None,
        typer.Option(
            "--vecnormalize",
            exists=True,
            dir_okay=False,
            help="SB3 only: VecNormalize pickle (default: vecnormalize.pkl next to the zip).",
        ),
    ] = None,
    env_id: Annotated[
        str | None,
        typer.Option(
            "--env-id", help="SB3 only: training environment (default: the run's recipe)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the self-test observations.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the bundle files already in --out.")
    ] = False,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="SB3 only: allow unpickling the model zip's objects and vecnormalize.pkl. "
            "Unpickling runs code named in the files: use only on files you trust.",
        ),
    ] = False,
) -> None:
    """Export a trained policy as an ONNX policy bundle (policy.onnx, manifest.json,
    selftest.npz), verified against the source policy on 10k observations."""
    import torch

    from accelrl.agents.export.writer import PARITY_COUNT, ExportError, export
    from accelrl.bundle import MANIFEST_FILE, ONNX_FILE, SELFTEST_FILE, BundleError, read_manifest
    from accelrl.runs import OutputFolderError, prepare_output

    try:
        prepare_output(out, force=force, owned=(MANIFEST_FILE, ONNX_FILE, SELFTEST_FILE))
    except OutputFolderError as err:
        raise fail(str(err), EXIT_INVALID) from None
    torch.set_num_threads(1)
    try:
        # export() verifies the written bundle (hashes, self-test) before it returns.
        path = export(
            model, out, vecnormalize=vecnormalize, env_id=env_id, seed=seed,
            trust_pickle=trust_pickle,
        )  # fmt: skip
        m = read_manifest(path)
    except (ExportError, BundleError) as err:
        raise fail(str(err), EXIT_INVALID) from None
    parity = m.provenance.get("export", {}).get("parity_max_error_over_range")
    console.print(f"bundle: {path}", highlight=False)
    console.print(
        f"  {m.source} for {m.env_id}, {m.action_mode} actions {list(m.knob_names)}\n"
        f"  parity with the source on {PARITY_COUNT} observations: {parity:.2g} of the "
        f"action range\n  files: " + ", ".join(f"{n} ({h[:12]})" for n, h in m.files.items()),
        highlight=False,
    )
