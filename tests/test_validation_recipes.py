"""Training recipes (Stable-Baselines3 and APG) refuse meaningless values with the file, the
field and the value; ``accelrl train`` checks the recipe, every option and the run directory
before it writes anything."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner
from validation_testlib import (
    ALWAYS_INVALID,
    PROPERTY,
    assert_names,
    corrupt,
    field_name,
    negative_of,
    numeric_leaves,
)

from accelrl.agents.training.recipes import (
    APGRecipe,
    Recipe,
    RecipeError,
    load_recipe,
    task_file_relative,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "recipe.yaml"
# (a task YAML named by a recipe is relative to the recipe file, as load_recipe reads it)
SHIPPED = {
    p.stem: task_file_relative(yaml.safe_load(p.read_text()), p)
    for p in sorted((ROOT / "agents").glob("*.yaml"))
}

#: Fields of an SB3 recipe that must be >= 1 (or > 0).
SB3_POSITIVE = [
    ("total_timesteps",),
    ("num_envs",),
    ("hyperparameters", "learning_rate"),
    ("hyperparameters", "batch_size"),
    ("env", "max_episode_steps"),
    ("evaluation", "steps"),
]
#: Fields of an APG recipe that must be >= 1 (or > 0).
APG_POSITIVE = [
    ("apg", "iterations"),
    ("apg", "batch_size"),
    ("apg", "horizon"),
    ("apg", "learning_rate"),
    ("apg", "eps"),
    ("apg", "grad_clip"),
    ("apg", "hidden", 0),
]


def _validate(data: dict[str, Any]) -> Recipe | APGRecipe:
    kind = APGRecipe if data.get("algorithm") == "apg" else Recipe
    return kind.from_dict(data, source=SOURCE)


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(RecipeError) as info:
        _validate(data)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: invalid training recipe"), message
    return message


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(ROOT / "agents" / f"{name}.yaml")
    assert recipe.algorithm == SHIPPED[name]["algorithm"]


@PROPERTY
@given(st.data())
def test_any_corrupted_number_is_refused_naming_its_field(data: st.DataObject) -> None:
    recipe = SHIPPED[data.draw(st.sampled_from(sorted(SHIPPED)))]
    path = data.draw(st.sampled_from(list(numeric_leaves(recipe))))
    value = data.draw(st.sampled_from(ALWAYS_INVALID))
    assert_names(_error(corrupt(recipe, path, value)), field_name(path))


@PROPERTY
@given(st.data())
def test_zero_and_negative_sizes_are_refused(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SHIPPED)))
    recipe = SHIPPED[name]
    apg = recipe.get("algorithm") == "apg"
    path = data.draw(st.sampled_from(APG_POSITIVE if apg else SB3_POSITIVE))
    node = recipe
    for key in path[:-1]:
        node = node[key]
    value = data.draw(st.sampled_from([0, negative_of(node[path[-1]])]))
    if isinstance(node[path[-1]], int):
        value = int(value) if value == 0 else -5
    assert_names(_error(corrupt(recipe, path, value)), field_name(path), repr(value))


@PROPERTY
@given(
    st.sampled_from(sorted(SHIPPED)),
    st.sampled_from([(), ("env",), ("hyperparameters",), ("apg",), ("evaluation",)]),
    st.from_regex(r"\A[a-z][a-z_]{2,12}\Z"),
)
def test_unknown_keys_are_refused(name: str, where: tuple[str, ...], key: str) -> None:
    data = copy.deepcopy(SHIPPED[name])
    node = data
    for k in where:
        if k not in node:
            return
        node = node[k]
    if key in node or key == "algorithm":
        return
    node[key] = 1
    assert_names(_error(data), key)


@PROPERTY
@given(st.text(min_size=1, max_size=30).filter(lambda s: s != "accelrl/AresEATransverseTuning-v0"))
def test_unknown_env_ids_are_refused(env_id: str) -> None:
    for name in ("td3_icml", "apg"):
        data = corrupt(SHIPPED[name], ("env", "id"), env_id)
        assert_names(_error(data), "env.id", "unknown environment id")


@pytest.mark.parametrize(
    "reward, words",
    [
        ("nonsense", ["env.reward", "unknown reward term 'nonsense'"]),
        ([{"term": "feedback", "norm": "l7"}], ["env.reward", "l7"]),
        ([{"term": "icml", "weight": float("nan")}], ["env.reward", "weight", "nan"]),
    ],
)
def test_unknown_reward_terms_are_refused(reward: Any, words: list[str]) -> None:
    assert_names(_error(corrupt(SHIPPED["ppo"], ("env", "reward"), reward)), *words)


def test_apg_recipe_named_errors() -> None:
    message = _error(corrupt(SHIPPED["apg"], ("apg", "iterations"), -5))
    assert_names(message, "apg.iterations = -5", "greater than or equal to 1")
    both = copy.deepcopy(SHIPPED["apg"])
    both["apg"]["seed"] = 4
    assert_names(_error(both), "apg.seed (4)", "differ")


# ---------------------------------------------------------------------------- the command
def _train(*args: str) -> Any:
    from accelrl import cli

    return CliRunner().invoke(cli.app, ["train", *map(str, args)])


def _recipe(tmp_path: Path, name: str, **changes: Any) -> Path:
    data = copy.deepcopy(SHIPPED[name]) | changes
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "name, args, words",
    [
        ("apg", ["--timesteps", "100"], ["--timesteps", "apg.iterations"]),
        ("apg", ["--time-limit", "5"], ["--time-limit", "APG"]),
        ("td3_icml", ["--time-limit", "nan"], ["--time-limit", "finite", "nan"]),
        ("td3_icml", ["--time-limit", "inf"], ["--time-limit", "inf"]),
        ("td3_icml", ["--time-limit", "0"], ["--time-limit", "> 0"]),
        ("td3_icml", ["--seed", str(2**31)], ["--seed 2147483648", "seed = 2147483648"]),
        ("apg", ["--seed", str(2**40)], ["--seed", "seed = 1099511627776"]),
    ],
)
def test_options_are_checked_before_anything_is_written(tmp_path, name, args, words) -> None:
    out = tmp_path / "run"
    result = _train("--recipe", _recipe(tmp_path, name), "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert_names(" ".join(result.output.split()), *words)
    assert not out.exists()


def test_a_failing_recipe_never_touches_a_finished_run(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("the finished run's recipe\n")
    bad = _recipe(tmp_path, "apg", apg={"iterations": -5})
    for extra in ([], ["--force"]):
        result = _train("--recipe", bad, "--out", out, *extra)
        assert result.exit_code == 2, result.output
        assert "apg.iterations = -5" in result.output
    assert (out / "recipe.yaml").read_text() == "the finished run's recipe\n"


def test_an_existing_run_directory_needs_force(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "policy").mkdir()
    recipe = _recipe(tmp_path, "apg", apg={"iterations": 1, "batch_size": 2, "horizon": 1})
    result = _train("--recipe", recipe, "--out", out, "--no-progress")
    assert result.exit_code == 2
    assert_names(" ".join(result.output.split()), "--out", "exists", "--force")
    assert not (out / "recipe.yaml").exists()
    result = _train("--recipe", recipe, "--out", out, "--no-progress", "--force", "--seed", "3")
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out / "recipe.yaml").read_text())
    assert written["seed"] == 3 and written["apg"]["iterations"] == 1


def test_sb3_recipe_with_unknown_env_fails_before_training(tmp_path) -> None:
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, "ppo", env={"id": "accelrl/Nothing-v0"})
    result = _train("--recipe", recipe, "--out", out)
    assert result.exit_code == 2
    assert "env.id = 'accelrl/Nothing-v0'" in result.output
    assert "Traceback" not in result.output and not out.exists()
