"""pyproject.toml and environment.yml declare the same dependencies with the same bounds."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from perfkit import environment as env_mod

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


# ---------------------------------------------------------------- provenance (perfkit/environment.py)


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for args in (
        ["init", "-q"],
        ["-c", "user.email=a@b", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_an_installed_copy_inside_another_repository_records_no_commit(tmp_path, monkeypatch):
    monkeypatch.delenv("PERFKIT_COMMIT", raising=False)
    other = _git_repo(tmp_path / "someone-elses-project")
    installed = other / ".venv" / "site-packages" / "perfkit"
    installed.mkdir(parents=True)
    assert env_mod.git_commit(installed) is None  # not that project's HEAD
    outside = tmp_path / "no-repo" / "perfkit"
    outside.mkdir(parents=True)
    assert env_mod.git_commit(outside) is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_dir_in_the_environment_does_not_redirect_the_commit(tmp_path, monkeypatch):
    monkeypatch.delenv("PERFKIT_COMMIT", raising=False)
    ours = ROOT / "perfkit"
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ours, capture_output=True).returncode != 0:
        pytest.skip("this copy of perfkit is not a git checkout")
    expected = env_mod.git_commit(ours)
    other = _git_repo(tmp_path / "other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert env_mod.git_commit(ours) == expected
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=ours,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    ).stdout.strip()
    assert expected.split("+")[0] == head
    monkeypatch.setenv("PERFKIT_COMMIT", "abc123")  # stamped by whoever copied the tree (e.g. a GPU node)
    assert env_mod.git_commit(ours) == "abc123"


def test_package_hash_follows_the_code(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    first = env_mod.package_hash(package)
    assert first == env_mod.package_hash(package) and len(first) == 64
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert env_mod.package_hash(package) != first
    assert (
        "package_sha256" in env_mod.environment()
        and env_mod.environment()["package_sha256"] == env_mod.package_hash()
    )


def test_the_build_stamp_gives_the_commit_and_whether_the_checkout_had_changes():
    clean = env_mod.build_stamp("0.1.dev57+g091ea8c")
    assert clean == {"version": "0.1.dev57+g091ea8c", "commit": "091ea8c", "dirty": False}
    dirty = env_mod.build_stamp("0.1.dev57+g091ea8c.d20261202")
    assert dirty["commit"] == "091ea8c" and dirty["dirty"] is True
    assert env_mod.build_stamp("0.1.0") == {
        "version": "0.1.0",
        "commit": None,
        "dirty": False,
    }  # no git at build


def test_an_installed_copy_outside_git_records_its_build_stamp(monkeypatch):
    monkeypatch.delenv("PERFKIT_COMMIT", raising=False)
    monkeypatch.setattr(env_mod, "git_commit", lambda start=None: None)  # as in a wheel in site-packages
    monkeypatch.setattr(
        env_mod,
        "build_stamp",
        lambda version=None: {"version": "0.1.dev3+gabcdef1.d20261202", "commit": "abcdef1", "dirty": True},
    )
    assert env_mod.recorded_commit() == ("abcdef1+dirty", "build stamp")
    env = env_mod.environment()
    assert env["commit"] == "abcdef1+dirty" and env["commit_source"] == "build stamp"
    # a live checkout wins; git_commit itself honours PERFKIT_COMMIT first, as the real one does
    monkeypatch.setattr(
        env_mod, "git_commit", lambda start=None: os.environ.get("PERFKIT_COMMIT") or "f00+dirty"
    )
    assert env_mod.recorded_commit() == ("f00+dirty", "git checkout")
    monkeypatch.setenv("PERFKIT_COMMIT", "c0ffee")
    assert env_mod.recorded_commit() == ("c0ffee", "PERFKIT_COMMIT")


def test_the_installed_package_carries_a_stamp_of_its_build():
    # make venv installs perfkit through setuptools-scm, which writes perfkit/_version.py
    import perfkit

    stamp = env_mod.build_stamp()
    if stamp is None:
        pytest.skip("perfkit was not installed here (a source tree on PYTHONPATH)")
    assert stamp["version"] == perfkit.__version__ and stamp["commit"], stamp
