"""Dependencies: everything accelrl imports is declared, every declared range is bounded
above, and ``constraints.txt`` pins the tested versions (inside those ranges, and installed)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Extras installed by `make venv` and CI (and pinned by constraints.txt).
TESTED_EXTRAS = (
    "dev",
    "deploy",
    "surrogates",
    "xopt",
    "dashboard",
    "tensorboard",
    "cluster",
)
#: Imports that are optional at run time (guarded by ImportError or only used when already
#: loaded), with the reason.
OPTIONAL_IMPORTS = {
    "numba": "thread limits applied only when numba is already loaded",
    "threadpoolctl": "thread limits applied when present",
    "cupy": "FBPIC on a GPU when present",
    "tensorboard": "only with tensorboard: true in a recipe (clear error otherwise)",
}
#: Import name -> distribution, for modules whose names differ from their distribution's.
DISTRIBUTION = {
    "yaml": "pyyaml",
    "cheetah": "cheetah-accelerator",
    "stable_baselines3": "stable-baselines3",
    "wake_t": "wake-t",
    "dask_jobqueue": "dask-jobqueue",
    "pyfftw": "pyfftw",
}
#: Declared without an upper bound, with the reason.
UNBOUNDED = {
    "dask": "calendar versioning: no major releases to bound by",
    "distributed": "calendar versioning, released with dask",
}


def _requirements(group: str | None = None) -> list[Requirement]:
    items = (
        PYPROJECT["dependencies"] if group is None else PYPROJECT["optional-dependencies"][group]
    )
    return [Requirement(r) for r in items]


def _declared() -> dict[str, Requirement]:
    reqs = _requirements() + [
        r for g in PYPROJECT["optional-dependencies"] for r in _requirements(g)
    ]
    return {canonicalize_name(r.name): r for r in reqs}


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin name==version"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _third_party_imports() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "accelrl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("accelrl",)}


def test_every_import_is_declared() -> None:
    declared = set(_declared())
    installed = metadata.packages_distributions()
    missing = []
    for module in sorted(_third_party_imports() - set(OPTIONAL_IMPORTS)):
        names = {DISTRIBUTION.get(module, module)} | set(installed.get(module, []))
        if not {canonicalize_name(n) for n in names} & declared:
            missing.append(module)
    assert missing == [], f"imported but not declared in pyproject.toml: {missing}"


def test_every_dependency_is_bounded_above() -> None:
    unbounded = [
        str(r)
        for name, r in _declared().items()
        if name not in UNBOUNDED
        and not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)
    ]
    assert unbounded == [], f"no upper bound: {unbounded}"


def test_constraints_pin_every_tested_dependency_within_its_range() -> None:
    pins = _constraints()
    tested = _requirements() + [r for g in TESTED_EXTRAS for r in _requirements(g)]
    expected = {canonicalize_name(r.name) for r in tested} - {"torch"}
    assert set(pins) == expected, (
        f"constraints.txt lacks {sorted(expected - set(pins))}, "
        f"pins undeclared {sorted(set(pins) - expected)}"
    )
    for r in tested:
        name = canonicalize_name(r.name)
        if name in pins:
            assert r.specifier.contains(pins[name], prereleases=True), (
                f"{name}=={pins[name]} not in {r}"
            )


def test_installed_versions_match_the_constraints() -> None:
    mismatched = []
    for name, pin in _constraints().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # an extra left out of this environment
        if Version(installed.public) != pin:
            mismatched.append(f"{name}: installed {installed}, constraints.txt {pin}")
    assert mismatched == [], mismatched


def test_make_venv_installs_torch_first_then_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M)
    assert torch_version is not None
    torch = next(r for r in _requirements() if r.name == "torch")
    assert torch.specifier.contains(torch_version[1])
    torch_line = makefile.index('pip install "torch==$(TORCH_VERSION)"')
    package_line = makefile.index('pip install -c constraints.txt -e ".[$(EXTRAS)]"')
    assert torch_line < package_line
    extras = re.search(r"^EXTRAS \s*\?= (\S+)$", makefile, re.M)
    assert extras is not None and set(extras[1].split(",")) == set(TESTED_EXTRAS)


@pytest.mark.parametrize("module", sorted(OPTIONAL_IMPORTS))
def test_optional_imports_are_guarded(module: str) -> None:
    """Each optional import sits in a function (never at module level)."""
    for path in (ROOT / "accelrl").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert module not in names, f"{path}: module-level import of optional {module}"
