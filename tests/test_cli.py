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
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: unknown embed.token_budjet in {params} — did you mean token_budget?"]


def test_errors_name_the_flag_or_key_the_user_typed_in_plain_words(tmp_path, capsys):
    fasta, out = str(tmp_path / "x.fa"), str(tmp_path / "o")
    assert main(["embed", fasta, "-o", out, "--token-budget", "10"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --token-budget 10: must be at least 16 — pass another value to --token-budget"
    )
    assert main(["embed", fasta, "-o", out, "--checkpoint-every", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --checkpoint-every 0: must be")
    params = tmp_path / "p.yaml"
    params.write_text("embed:\n  num_workers: 1.5\n")
    assert main(["embed", fasta, "-o", out, "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: bad embed.num_workers in {params}: must be a whole number")
        and "Value error" not in err
    )
    params.write_text("embed:\n  precision: auto\n")  # listed in params/README.md: the flag takes it too
    # no input file
    assert main(["embed", fasta, "-o", out, "--precision", "auto", "--params", str(params)]) == 2
    assert "precision" not in capsys.readouterr().err


def test_parser_has_the_knobs_the_seed_tunes():
    embed = build_parser()._subparsers._group_actions[0].choices["embed"]
    flags = {o for a in embed._actions for o in a.option_strings}
    for flag in (
        "--num-workers",
        "--prefetch-factor",
        "--token-budget",
        "--buffer-size",
        "--checkpoint-every",
        "--checkpoint-seconds",
        "--no-copy-stream",
        "--resume",
        "--max-reads",
        "--max-seconds",
    ):
        assert flag in flags


RUN_FLAGS = [
    "--model",
    "esm2_t6_8M",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--num-workers",
    "0",
    "--no-progress",
]


def _error_lines(text):
    return [line for line in text.strip().splitlines() if line.startswith("error")]


def test_resume_with_nothing_left_and_a_resume_of_another_input(small_fasta, tmp_path, capsys):
    from perfkit.workload.data import count_frames
    from perfkit.workload.store import read_embeddings

    out = tmp_path / "o"
    assert main(["embed", str(small_fasta), "-o", str(out), *RUN_FLAGS]) == 0
    ids, vectors = read_embeddings(out / "embeddings.h5")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: random weights")]
    assert len(notes) == 1 and "mean nothing biologically" in notes[0] and "--weights" in notes[0]
    # nothing left to do: an honest line and exit 0 (the rates are None: formatting them raised TypeError)
    assert main(["embed", str(small_fasta), "-o", str(out), *RUN_FLAGS, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"nothing left to do: {count_frames(small_fasta)} sequences already embedded -> " in printed
    again_ids, again_vectors = read_embeddings(out / "embeddings.h5")  # refuses an incomplete file
    assert again_ids == ids and (again_vectors == vectors).all()

    # the same reads renamed, then another sample: refused before anything in --out is deleted or written
    renamed = tmp_path / "renamed.fa"
    renamed.write_text(small_fasta.read_text().replace(">read", ">sample"))
    other = tmp_path / "other.fa"
    other.write_text(small_fasta.read_text().split(">read60\n")[0])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    for fasta in (renamed, other):
        assert main(["embed", str(fasta), "-o", str(out), *RUN_FLAGS, "--resume"]) == 2
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and errors[0].startswith(f"error: --resume with another input: {fasta}")
        assert "--out" in errors[0]  # the fix
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert read_embeddings(out / "embeddings.h5")[0] == ids


def test_predict_resume_with_nothing_left(tmp_path, capsys):
    from conftest import orf_fasta

    fasta = orf_fasta(tmp_path / "s.fa", 12)
    flags = [
        str(fasta),
        "-o",
        str(tmp_path / "chain"),
        *RUN_FLAGS,
        "--hidden",
        "16",
        "--nt-model",
        "dnabert_mini",
    ]
    assert main(["predict", *flags]) == 0
    captured = capsys.readouterr()
    first = captured.out
    notes = [line for line in captured.err.splitlines() if line.startswith("note: random weights")]
    assert len(notes) == 1 and "nucleotide model dnabert" in notes[0] and "protein model esm2" in notes[0]
    assert "classifier" in notes[0]  # every random part is named
    assert main(["predict", *flags, "--resume"]) == 0
    resumed = capsys.readouterr().out
    # "N reads called (M virus) from F frames in 1 process(es)"
    assert first.split(";")[0] == resumed.split(";")[0]
    renamed = tmp_path / "renamed.fa"
    renamed.write_text(fasta.read_text().replace(">read", ">sample"))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "chain").rglob("*")}
    # refused before the chain touches its folder
    assert main(["predict", str(renamed), *flags[1:], "--resume"]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: --resume with another input: {renamed}")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "chain").rglob("*")} == before


def test_a_full_disk_is_one_error_line_exit_2_and_no_temp_file(small_fasta, tmp_path, monkeypatch, capsys):
    import errno
    import os

    from perfkit.workload import store

    def disk_full(f, keys, ids, vectors):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "_write_shard", disk_full)
    out = tmp_path / "o"
    code = main(
        [
            "embed",
            str(small_fasta),
            "-o",
            str(out),
            *RUN_FLAGS,
            "--checkpoint-every",
            "20",
            "--token-budget",
            "512",
        ]
    )
    assert code == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(
        "error: writing a checkpoint failed: No space left on device"
    )
    assert not list((out / "checkpoints").glob("*.tmp")) and not (out / "embeddings.h5").exists()


def test_a_failed_count_check_is_one_error_line_exit_3(small_fasta, tmp_path, monkeypatch, capsys):
    """Finding 8: internal check failures were tracebacks with exit 1."""
    from perfkit.workload import store

    real = store._check_count
    # the real check, told one frame more than was embedded (as a lost shard would leave it)
    monkeypatch.setattr(store, "_check_count", lambda index, expected: real(index, expected + 1))
    out = tmp_path / "o"
    assert main(["embed", str(small_fasta), "-o", str(out), *RUN_FLAGS]) == 3
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("error: count check failed: ") and "Traceback" not in err
    assert not (out / "embeddings.h5").exists()


def test_a_ranks_failed_check_makes_the_launcher_exit_3_with_one_line(small_fasta, tmp_path):
    import os

    from perfkit.workload.distributed import FAIL_RANK_ENV

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit",
            "embed",
            str(small_fasta),
            "-o",
            str(tmp_path / "o"),
            *RUN_FLAGS,
            "--nproc",
            "2",
            "--block-reads",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1", FAIL_RANK_ENV: "1:check"},
    )
    assert done.returncode == 3  # torchrun exits 1 whatever its rank's code: the launcher reports the check
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 1: count check failed: fault injected")
    assert not (tmp_path / "o" / "embeddings.h5").exists()


def test_an_out_path_that_is_a_file_and_a_frame_too_long_for_the_budget_are_named(
    small_fasta, tmp_path, capsys
):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    assert main(["embed", str(small_fasta), "-o", str(a_file), *RUN_FLAGS]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: --out {a_file} is a file, not a folder — pass a folder path to -o/--out"
    )
    # a 16-token budget holds no frame of these reads: the error names a frame by id and a fix that works
    assert (
        main(["embed", str(small_fasta), "-o", str(tmp_path / "o"), *RUN_FLAGS, "--token-budget", "16"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: frame read")
        and "tokens, more than the token budget 16" in err[0]
    )
    assert "raise --token-budget (embed.token_budget) to at least" in err[0] and "on_oversize" not in err[0]


def test_predict_help_names_what_predict_writes_and_not_what_embed_writes(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "predictions_per_read.csv" in text and "parts/" in text and "no embeddings.h5" in text
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "embeddings.h5" in text and "predictions_per_read.csv" not in text


def test_the_final_line_names_the_precision_that_ran_not_auto(small_fasta, tmp_path, capsys):
    flags = [
        "--model",
        "esm2_t6_8M",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--no-progress",
    ]  # precision: auto
    assert main(["embed", str(small_fasta), "-o", str(tmp_path / "o"), *flags]) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert "esm2_t6_8M fp32 on cpu" in final and "auto" not in final, final
