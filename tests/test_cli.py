import json
import subprocess
import sys

import pytest

from perfkit.cli import build_parser, main


def test_help_lists_every_command_with_a_description(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("embed", "data", "suite", "wheelhouse", "env"):
        assert command in text
    out = subprocess.run([sys.executable, "-m", "perfkit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "embed" in out.stdout


def test_synth_then_profile(tmp_path, capsys):
    fasta = tmp_path / "s.fa"
    assert main(["data", "synth", "-n", "500", "--seed", "1", "-o", str(fasta)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert fasta.exists() and stats
    assert main(["data", "profile", str(fasta), "-o", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["schema"] == "perfkit.profile/1"


def test_bad_params_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("embed: [unclosed\n")
    code = main(["embed", str(tmp_path / "x.fa"), "-o", str(tmp_path / "o"), "--params", str(bad)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "bad.yaml" in err[0]


def test_unknown_embed_setting_in_params_is_named(tmp_path, capsys):
    params = tmp_path / "p.yaml"
    params.write_text("embed:\n  token_budjet: 100\n")
    code = main(["embed", str(tmp_path / "x.fa"), "-o", str(tmp_path / "o"), "--params", str(params)])
    assert code == 2
    assert "token_budjet" in capsys.readouterr().err


def test_parser_has_the_knobs_the_seed_tunes():
    embed = build_parser()._subparsers._group_actions[0].choices["embed"]
    flags = {o for a in embed._actions for o in a.option_strings}
    for flag in ("--num-workers", "--prefetch-factor", "--token-budget", "--buffer-size", "--checkpoint-every",
                 "--checkpoint-seconds", "--no-copy-stream", "--resume", "--max-reads", "--max-seconds"):
        assert flag in flags
