"""Params files (YAML): loaded with clear errors; each section is validated by its consumer."""

from __future__ import annotations

from pathlib import Path

import yaml

from perfkit.errors import UserError


def load_params(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(
            f"cannot read params file {path}: {err.strerror}",
            "pass an existing YAML file, e.g. params/smoke.yaml",
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(
            f"{where}: not valid YAML ({getattr(err, 'problem', err)})", "fix the YAML syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of sections", "see params/README.md")
    return data
