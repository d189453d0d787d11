"""The direction of the package: physics -> envs -> agents -> bundle <- runtime -> machines.

Every ``import`` statement in the library (module level and inside functions) is read from
the source, so a lazy import cannot hide a dependency; the rules are also checked by
importing modules in fresh interpreters and looking at what got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "accelrl"

#: Modules beneath everything: they may import only these (besides the standard library).
FOUNDATION = {
    "accelrl.protocol": {"numpy"},
    "accelrl.bundle": {"numpy", "pydantic", "accelrl.config", "accelrl.averaging"},
    "accelrl.names": set(),
    "accelrl.limits": {"numpy"},
    "accelrl.averaging": {"numpy"},
    "accelrl.units": set(),
    "accelrl.resources": set(),
    "accelrl.runs": set(),
    "accelrl.interrupts": set(),
    "accelrl.runfiles": set(),
    "accelrl.trialset": {"yaml", "pydantic", "accelrl.config", "accelrl.resources"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> every module it imports (absolute names)."""
    out: dict[str, set[str]] = {}
    for path in LIB.rglob("*.py"):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        out[name] = found
    return out


IMPORTS = _imports()


def _violations(inside: str, forbidden: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in IMPORTS.items()
        if module == inside or module.startswith(inside + ".")
        for target in targets
        if (target == forbidden or target.startswith(forbidden + "."))
        and not any(target == a or target.startswith(a + ".") for a in allowed)
    )


def test_the_parser_sees_lazy_imports() -> None:
    """The check is not vacuous: a lazy import inside a function is found."""
    assert "accelrl.agents.registry" in IMPORTS["accelrl.agents.evaluation.runner"]
    assert len(IMPORTS) > 80


def test_deploy_never_imports_agents() -> None:
    assert _violations("accelrl.deploy", "accelrl.agents") == []


def test_agents_use_only_the_runtime_of_deploy() -> None:
    """Agents write bundles and may read one back with the runtime to verify it; nothing
    else of deploy (controller, safety, machines, EPICS) is theirs to use."""
    assert (
        _violations("accelrl.agents", "accelrl.deploy", allowed=("accelrl.deploy.runtime",)) == []
    )


@pytest.mark.parametrize(
    "layer",
    ["accelrl.physics", "accelrl.envs", "accelrl.agents", "accelrl.deploy", "accelrl.surrogates"],
)
def test_no_library_module_imports_the_cli(layer: str) -> None:
    assert _violations(layer, "accelrl.cli") == []


@pytest.mark.parametrize(
    "upper", ["accelrl.envs", "accelrl.agents", "accelrl.deploy", "accelrl.surrogates"]
)
def test_physics_imports_nothing_above_it(upper: str) -> None:
    assert _violations("accelrl.physics", upper) == []


@pytest.mark.parametrize("upper", ["accelrl.agents", "accelrl.deploy"])
def test_envs_import_no_agent_and_no_machine(upper: str) -> None:
    assert _violations("accelrl.envs", upper) == []


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_foundation_modules_stand_alone(module: str) -> None:
    allowed = FOUNDATION[module]
    third_party = {
        t
        for t in IMPORTS[module]
        if t.split(".")[0] not in sys.stdlib_module_names and t != "__future__"
    }
    assert {
        t for t in third_party if not any(t == a or t.startswith(a + ".") for a in allowed)
    } == set()


def _loaded_after(statement: str) -> set[str]:
    code = (
        f"import sys; {statement}; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('accelrl', 'torch')))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


def test_the_runtime_loads_no_agent_and_no_torch() -> None:
    loaded = _loaded_after(
        "import accelrl.deploy.controller, accelrl.deploy.safety, accelrl.deploy.epics, "
        "accelrl.deploy.runtime"
    )
    assert "accelrl.deploy.controller" in loaded
    assert not {m for m in loaded if m.startswith(("accelrl.agents", "accelrl.cli", "torch"))}


def test_the_protocol_and_bundle_load_nothing_of_the_layers() -> None:
    loaded = _loaded_after("import accelrl.protocol, accelrl.bundle, accelrl.limits")
    layers = ("accelrl.agents", "accelrl.deploy", "accelrl.envs", "accelrl.physics", "torch")
    assert not {m for m in loaded if m.startswith(layers)}


def test_old_module_paths_warn_and_give_the_new_module() -> None:
    import importlib

    import accelrl.agents.training.apg as new

    sys.modules.pop("accelrl.agents.apg", None)  # another test may have imported it
    with pytest.warns(DeprecationWarning, match="accelrl.agents.apg moved to"):
        old = importlib.import_module("accelrl.agents.apg")
    assert old is new and new.__spec__.name == "accelrl.agents.training.apg"
