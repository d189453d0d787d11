"""``accelrl envs list`` and ``accelrl envs show ID``: the registered environments.

``list`` reads only the registration and the task specs (nothing is built); ``show`` builds
the environment it describes, so what it prints is what an agent gets.
"""

from __future__ import annotations

import re

import numpy as np
from rich.markup import escape
from rich.table import Table

from accelrl.cli.common import EVAL_STEPS, EnvIdArg, command_group, console
from accelrl.units import INCOMING_DISPLAY, MM, UM, display_unit

#: ``accelrl envs ...`` commands.
envs_app = command_group("Registered tuning environments.")


def _num(value: float, scale: float = 1.0) -> str:
    """``value * scale`` with 4 significant digits (``inf`` shown as such)."""
    v = float(value) * scale
    if not np.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


def _reward_descriptions() -> dict[str, str]:
    """Term name -> one-line description, read from :mod:`accelrl.envs.rewards`' docstring."""
    from accelrl.envs import rewards

    out: dict[str, str] = {}
    doc = rewards.__doc__ or ""
    for match in re.finditer(r"^``(\w+)``\n((?:[ \t]+\S.*\n?)+)", doc, flags=re.MULTILINE):
        text = " ".join(line.strip() for line in match.group(2).splitlines())
        out[match.group(1)] = text.replace("``", "")
    return out


@envs_app.command("list")
def envs_list() -> None:
    """List the registered accelrl environment ids."""
    import gymnasium as gym

    from accelrl.envs import TASKS

    table = Table(title="Registered accelrl environments")
    table.add_column("id", style="bold cyan", no_wrap=True)
    table.add_column("description")
    table.add_column("actuators", justify="right")
    table.add_column("TimeLimit", justify="right")
    for env_id in sorted(TASKS):
        spec = TASKS[env_id]()
        limit = gym.spec(env_id).max_episode_steps if env_id in gym.registry else None
        table.add_row(
            env_id,
            spec.description,
            str(len(spec.actuators)),
            str(limit if limit is not None else spec.max_episode_steps),
        )
    # Environments configured in code (surrogate-based): described by their classes, never
    # built (building one loads its surrogate).
    from gymnasium.envs.registration import load_env_creator

    from accelrl.registration import CODE_ENVIRONMENTS

    for env_id in sorted(CODE_ENVIRONMENTS):
        doc = (load_env_creator(CODE_ENVIRONMENTS[env_id][0]).__doc__ or "").strip().splitlines()
        limit = gym.spec(env_id).max_episode_steps
        table.add_row(env_id, doc[0] if doc else "", "surrogate inputs", str(limit))
    console.print(table)


@envs_app.command("show")
def envs_show(env_id: EnvIdArg) -> None:
    """Spaces, screen, randomisation, termination and reward of one environment."""
    import gymnasium as gym

    from accelrl.envs import TASKS, TransverseTuningEnv
    from accelrl.physics import BACKENDS, INCOMING, TRANSVERSE

    spec = TASKS[env_id]()
    # The spaces are read from real environments, so what is shown is what an agent gets.
    envs = {mode: TransverseTuningEnv(spec, action_mode=mode) for mode in ("delta", "direct")}
    limit = gym.spec(env_id).max_episode_steps if env_id in gym.registry else None

    console.print(f"[bold cyan]{escape(env_id)}[/]")
    if spec.description:
        console.print(spec.description)
    console.print(
        f"lattice: {spec.lattice or '-'}   default TimeLimit: "
        f"{limit if limit is not None else spec.max_episode_steps} steps (evaluation: "
        f"{EVAL_STEPS})   backends: {', '.join(BACKENDS)}   render modes: "
        f"{', '.join(envs['delta'].metadata['render_modes'])}"
    )

    # Action space
    delta, direct = envs["delta"].action_space, envs["direct"].action_space
    table = Table(
        title=f"Action space: Box({delta.shape[0]}), float32. 'delta' mode (default): change "
        f"per step, at most {spec.delta_fraction:g} x max(|low|, |high|) of each actuator; "
        "'direct' mode: absolute setting. Actions outside the box are clipped."
    )
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("element.attribute")
    table.add_column("unit", no_wrap=True)
    table.add_column(escape("delta [low, high]"), justify="right", no_wrap=True)
    table.add_column(escape("direct [low, high]"), justify="right", no_wrap=True)
    table.add_column("start", justify="right", no_wrap=True)
    for i, (act, start) in enumerate(zip(spec.actuators, spec.start, strict=True)):
        scale, unit = display_unit(act.unit)
        table.add_row(
            act.name,
            f"{act.element}.{act.attribute}",
            unit,
            escape(f"[{_num(delta.low[i], scale)}, {_num(delta.high[i], scale)}]"),
            escape(f"[{_num(direct.low[i], scale)}, {_num(direct.high[i], scale)}]"),
            _num(start, scale),
        )
    console.print(table)

    # Observation space
    obs_space = envs["delta"].observation_space
    table = Table(title="Observation space: Dict(beam, magnets, target), float32")
    for col in ("key", "component", "unit", "low", "high"):
        table.add_column(col, justify="right" if col in ("low", "high") else None)
    for key in ("beam", "magnets", "target"):
        box = obs_space[key]
        for i in range(box.shape[0]):
            if key == "magnets":
                act = spec.actuators[i]
                name, (scale, unit) = act.name, display_unit(act.unit)
            else:
                name, scale, unit = TRANSVERSE[i], MM, "mm"
            table.add_row(
                key if i == 0 else "", name, unit, _num(box.low[i], scale), _num(box.high[i], scale)
            )
    console.print(table)
    console.print(
        "beam: the screen reading; off the screen it is the centroid clamped to the edge and "
        "the screen's half size (info['on_screen'] is False). info carries the hidden state."
    )

    # Screen
    s = spec.screen
    hx, hy = s.half_extent
    table = Table(title=f"Screen {s.element}", show_header=False)
    table.add_column("property")
    table.add_column("value")
    table.add_row("resolution", f"{s.resolution[0]} x {s.resolution[1]} px (binning {s.binning})")
    table.add_row("pixel size", f"{_num(s.pixel_size[0], UM)} x {_num(s.pixel_size[1], UM)} um")
    table.add_row(
        "extent",
        f"{_num(2 * hx, MM)} x {_num(2 * hy, MM)} mm "
        f"(x in +-{_num(hx, MM)} mm, y in +-{_num(hy, MM)} mm)",
    )
    table.add_row(
        "reading noise", f"{_num(s.reading_noise, UM)} um rms" if s.reading_noise else "off"
    )
    table.add_row("quantised to pixels", "yes" if s.quantise else "no")
    console.print(table)

    # Randomisation
    r = spec.randomisation
    table = Table(title="Randomisation (uniform, drawn at every reset)")
    for col in ("quantity", "low", "high", "unit"):
        table.add_column(col, justify="right" if col in ("low", "high") else None)
    for key in INCOMING:
        scale, unit = INCOMING_DISPLAY.get(key, (1.0, "SI"))
        u = r.incoming[key]
        table.add_row(f"incoming {key}", _num(u.low, scale), _num(u.high, scale), unit)
    for name, half in r.misalignments.items():
        table.add_row(f"misalignment {name} (x, y)", _num(-half, UM), _num(half, UM), "um")
    table.add_row("target mu_x, mu_y", _num(-r.target_mu, MM), _num(r.target_mu, MM), "mm")
    table.add_row(
        "target sigma_x, sigma_y",
        _num(r.target_sigma.low, MM),
        _num(r.target_sigma.high, MM),
        "mm",
    )
    console.print(table)
    optional = [
        ("reading noise", f"{_num(s.reading_noise, UM)} um rms" if s.reading_noise else "off"),
        (
            "incoming-beam drift",
            f"{_num(r.drift.mu, UM)} um, {_num(r.drift.mu_p, UM)} urad rms per step"
            if r.drift.mu or r.drift.mu_p
            else "off",
        ),
        (
            "actuator failure",
            f"probability {r.failure.probability:g} per episode, stuck from step "
            f"{r.failure.step[0]}-{r.failure.step[1]}"
            if r.failure.probability
            else "off",
        ),
        (
            "calibration (gain) error",
            f"+-{100 * r.gain_error:g} % per actuator" if r.gain_error else "off",
        ),
    ]
    console.print("optional: " + "; ".join(f"{k}: {v}" for k, v in optional))

    # Termination, truncation, reward
    t = spec.termination
    thresholds = ", ".join(
        f"{n} {_num(v, UM)} um" for n, v in zip(TRANSVERSE, t.thresholds, strict=True)
    )
    console.print(
        f"[bold]termination:[/] {'enabled' if t.enabled else 'disabled'} - all |reading - target| "
        f"below ({thresholds}) for {t.hold} step(s); off in evaluation "
        "(terminate_on_target=False)"
    )
    console.print(
        f"[bold]truncation:[/] TimeLimit {limit if limit is not None else spec.max_episode_steps}"
        f" steps (evaluation: {EVAL_STEPS})"
    )
    from accelrl.envs import Reward

    descriptions = _reward_descriptions()
    config = spec.reward
    console.print(f"[bold]reward:[/] {escape(repr(Reward(config)))}")
    names = [config] if isinstance(config, str) else [c.get("term", "?") for c in config]
    for name in names:
        if name in descriptions:
            console.print(f"  {name}: {escape(descriptions[name])}")
    if not isinstance(config, str):
        console.print(f"  config: {escape(repr(config))}")
