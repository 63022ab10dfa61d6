"""perfkit.workload.rank: the ranks take their config as data from the launcher's spec."""

import subprocess
import sys

from perfkit.workload import rank
from perfkit.workload.config import make_config


def test_a_spec_gives_back_the_very_config_the_launcher_checked(tmp_path):
    cfg = make_config(
        input=tmp_path / "in.fa",
        out_dir=tmp_path / "out",
        model="esm2_t6_8M",
        token_budget=4096,
        nt_model="dnabert_mini",
        device="cpu",
        nucleotide={"token_budget": 8192},
        max_reads=7,
    )
    spec = rank.write_spec(tmp_path, "predict", cfg, hidden=16, classifier=None, verbose=True)
    command, again, extra = rank.read_spec(spec)
    assert (
        command == "predict" and again == cfg and extra == {"hidden": 16, "classifier": None, "verbose": True}
    )


def test_outside_torchrun_it_says_how_runs_start(tmp_path):
    cfg = make_config(input=tmp_path / "in.fa", out_dir=tmp_path / "out")
    spec = rank.write_spec(tmp_path, "embed", cfg)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "perfkit.workload.rank", str(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().startswith(
        "error: perfkit.workload.rank runs inside a torchrun"
    )
    assert rank.main([]) == 2
