"""APG on a device: ``APGConfig.device``, the recipe key and ``accelrl train --device``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from accelrl import cli
from accelrl.agents.training.apg import config_from_dict, train_apg
from accelrl.agents.training.recipes import APGConfig, RecipeError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
TINY = dict(iterations=3, batch_size=16, horizon=3, hidden=[8])


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


def test_device_is_a_validated_recipe_key() -> None:
    assert APGConfig().device == "cpu"
    assert config_from_dict({"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(RecipeError, match=r"device.*'gpu'.*'cpu', 'cuda', 'cuda:N'"):
        config_from_dict({"device": "gpu"})


def test_explicit_cpu_trains_the_same_policy() -> None:
    default = train_apg(APGConfig(**TINY), progress=False)
    cpu = train_apg(APGConfig(**TINY, device="cpu"), progress=False)
    assert cpu.losses == default.losses
    assert all(p.device.type == "cpu" for p in cpu.policy.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_train_device_cuda_without_gpu_is_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--recipe", str(ROOT / "agents" / "apg.yaml"), "--out", str(out)]
    result = runner.invoke(cli.app, [*args, "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "device='cuda'" in _flat(result.output) and "device='cpu'" in _flat(result.output)
    assert not out.exists()
    with pytest.raises(Exception, match="device='cuda'"):
        train_apg(APGConfig(**TINY, device="cuda"), progress=False)


def test_train_device_needs_an_apg_recipe(tmp_path: Path) -> None:
    args = ["train", "--recipe", str(ROOT / "agents" / "ppo.yaml"), "--out", str(tmp_path / "r")]
    result = runner.invoke(cli.app, [*args, "--device", "cpu"])
    assert result.exit_code == 2
    assert "applies to APG recipes" in _flat(result.output)
    result = runner.invoke(
        cli.app,
        ["train", "--recipe", str(ROOT / "agents" / "apg.yaml"), "--device", "tpu"],
    )
    assert result.exit_code == 2 and "'tpu'" in _flat(result.output)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_agrees_with_cpu_at_the_start() -> None:
    cpu = train_apg(APGConfig(**TINY), progress=False)
    gpu = train_apg(APGConfig(**TINY, device="cuda"), progress=False)
    assert all(p.device.type == "cpu" for p in gpu.policy.parameters())  # saved on the CPU
    # the device's random draws differ from the CPU's: same scale of loss, not the same values
    assert abs(gpu.losses[0] - cpu.losses[0]) < 2.0
