"""pyproject.toml and environment.yml declare the same dependencies with the same bounds."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement).groups()
    name = re.sub(r"[-_.]+", "-", name).lower()
    return CONDA_NAMES.get(name, name), spec.replace(" ", "")


def pyproject_requirements() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return dict(_split(r) for r in reqs)


def environment_requirements() -> dict:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e") or item.split(">")[0].split("=")[0] in ("python", "pip"):
                continue
            name, spec = _split(item)
            out[name] = spec
    return out


def test_same_packages_and_bounds():
    assert pyproject_requirements() == environment_requirements()


def test_drift_would_be_caught():
    env = environment_requirements()
    env.pop("nvitop")
    assert pyproject_requirements() != env
