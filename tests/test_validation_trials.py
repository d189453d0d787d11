"""Trial sets refuse meaningless values (NaN, inf, energy <= 0, negative sizes, unknown keys,
malformed misalignment names) with the file, the trial, the field and the value; a
:class:`~accelrl.envs.trials.Trial` made in code checks its values too, so no NaN trial can
give NaN rewards. Reading needs no torch."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from validation_testlib import (
    ALWAYS_INVALID,
    PROPERTY,
    assert_names,
    corrupt,
    field_name,
    negative_of,
    numeric_leaves,
)

from accelrl.trialset import DEFAULT_TRIALS, TrialSetError, read_trial_set

ROOT = Path(__file__).resolve().parents[1]
RAW: dict[int, Any] = {
    i: t for i, t in yaml.load(DEFAULT_TRIALS.read_text(), Loader=yaml.CSafeLoader).items() if i < 3
}
#: Fields of a trial that must be >= 0 (energy: > 0).
NON_NEGATIVE = [
    ("incoming", "energy"),
    ("incoming", "sigma_x"),
    ("incoming", "sigma_xp"),
    ("incoming", "sigma_y"),
    ("incoming", "sigma_yp"),
    ("incoming", "sigma_s"),
    ("incoming", "sigma_p"),
    ("target", "sigma_x"),
    ("target", "sigma_y"),
]


def _error(tmp_path: Path, data: dict[int, Any]) -> str:
    path = tmp_path / "trials.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TrialSetError) as info:
        read_trial_set(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


@PROPERTY
@given(st.data())
def test_any_corrupted_number_is_refused_naming_trial_and_field(tmp_path, data) -> None:
    index = data.draw(st.sampled_from(sorted(RAW)))
    path = data.draw(st.sampled_from(list(numeric_leaves(RAW[index]))))
    value = data.draw(st.sampled_from(ALWAYS_INVALID))
    message = _error(tmp_path, corrupt(RAW, (index, *path), value))
    assert_names(message, f"trial {index}", field_name(path))


@PROPERTY
@given(st.sampled_from(sorted(RAW)), st.sampled_from(NON_NEGATIVE))
def test_negative_sizes_and_energies_are_refused(tmp_path, index, path) -> None:
    value = negative_of(RAW[index][path[0]][path[1]])
    message = _error(tmp_path, corrupt(RAW, (index, *path), value))
    assert_names(message, f"trial {index}", f"{path[0]}.{path[1]}", repr(value))


@PROPERTY
@given(
    st.sampled_from(sorted(RAW)),
    st.sampled_from([(), ("incoming",), ("target",)]),
    st.from_regex(r"\A[a-z][a-z_]{2,12}\Z"),
)
def test_unknown_keys_are_refused(tmp_path, index, where, key) -> None:
    data = copy.deepcopy(RAW)
    node = data[index]
    for k in where:
        node = node[k]
    if key in node or key in ("mu_px", "mu_py", "sigma_px", "sigma_py", "sigma_tau"):
        return
    node[key] = 1.0
    assert_names(_error(tmp_path, data), f"trial {index}", key)


@pytest.mark.parametrize(
    "change, words",
    [
        (("misalignments", "q1_z"), ["q1_z", "'<element>_x'"]),
        (("misalignments", "q1"), ["q1", "'<element>_x'"]),
        (("misalignments", "AREAMQZM1_x"), ["'q1_x'", "'AREAMQZM1_x'", "AREAMQZM1.x"]),
    ],
)
def test_malformed_misalignment_names_are_refused(tmp_path, change, words) -> None:
    data = copy.deepcopy(RAW)
    data[1][change[0]][change[1]] = 1e-4
    assert_names(_error(tmp_path, data), "trial 1", *words)


def test_indices_must_be_integers(tmp_path) -> None:
    data = {"first": RAW[0]}
    assert_names(_error(tmp_path, data), "integers >= 0", "first")


def test_trial_objects_check_their_values() -> None:
    from accelrl.envs import load_trials
    from accelrl.envs.trials import Trial

    good = load_trials()[0]
    for incoming, word in [
        (np.where(np.arange(11) == 3, np.nan, good.incoming), "incoming.mu_y = nan"),
        (np.where(np.arange(11) == 0, -1.0, good.incoming), "incoming.energy = -1.0"),
        (np.where(np.arange(11) == 5, -1e-4, good.incoming), "incoming.sigma_x = -0.0001"),
        (good.incoming * (1 + 1j), "complex"),
    ]:
        with pytest.raises(ValueError, match=word.replace("(", r"\(")):
            Trial(7, incoming, good.misalignments, good.target)
    with pytest.raises(ValueError, match="target.sigma_y = -1.0"):
        Trial(7, good.incoming, {}, np.array([0.0, 0.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="AREAMQZM1"):
        Trial(7, good.incoming, {"AREAMQZM1": 1e-4}, good.target)
    with pytest.raises(ValueError, match=r"misalignments.AREAMQZM1.x = inf"):
        Trial(7, good.incoming, {"AREAMQZM1.x": np.inf}, good.target)


def test_reading_a_trial_set_needs_no_torch() -> None:
    code = (
        "import sys; from accelrl.trialset import read_trial_set; read_trial_set(); "
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'accelrl.envs'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
