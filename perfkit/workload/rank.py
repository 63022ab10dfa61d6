"""What every rank of a perfkit launch runs: `python -m perfkit.workload.rank SPEC.json` under torchrun.

The launcher hands its ranks the run's settings as data: the EmbedConfig it validated and checked, dumped to
a JSON spec (with predict's classifier settings), which each rank validates back into the same EmbedConfig.
No rank parses a command line or a params file again, so a rank runs exactly what its launcher checked.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from perfkit.errors import CheckFailed, UserError
from perfkit.workload.config import EmbedConfig

ENTRY = ("-m", "perfkit.workload.rank")  # torchrun's module argument
SPEC_FILE = "rank_spec.json"


def write_spec(folder: Path, command: str, cfg: EmbedConfig, **extra) -> Path:
    """`folder`/rank_spec.json: the command (embed | predict), the whole config, and `extra` (JSON values)."""
    path = Path(folder) / SPEC_FILE
    path.write_text(json.dumps({"command": command, "config": cfg.model_dump(mode="json"), **extra}))
    return path


def read_spec(path) -> tuple[str, EmbedConfig, dict]:
    """(command, config, extra) of a spec written by `write_spec`."""
    spec = json.loads(Path(path).read_text())
    return spec.pop("command"), EmbedConfig.model_validate(spec.pop("config")), spec


def main(argv: list[str] | None = None) -> int:
    from perfkit.workload import distributed
    from perfkit.workload.predict import predict_rank

    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) != 1:
            raise UserError(
                "perfkit.workload.rank takes one argument, the launcher's spec file",
                "start runs with perfkit embed / predict --gpus N or --nproc N",
            )
        command, cfg, extra = read_spec(argv[0])
        logging.basicConfig(
            level=logging.INFO if extra.get("verbose") else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        info = distributed.torchrun_rank()
        if info is None:
            raise UserError(
                "perfkit.workload.rank runs inside a torchrun launch",
                "start runs with perfkit embed / predict --gpus N or --nproc N",
            )
        if command == "embed":
            distributed.rank_main(cfg, info)
        else:
            predict_rank(cfg, info, classifier_weights=extra.get("classifier"), hidden=extra["hidden"])
    except (UserError, CheckFailed) as err:
        print(err.one_line(), file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
