"""End-to-end runs on CPU: v1 and v2 outputs, count conservation, resume after real SIGKILLs."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import orf_fasta
from perfkit.errors import UserError
from perfkit.workload.config import make_config
from perfkit.workload.data import count_frames
from perfkit.workload.runner import run_embed
from perfkit.workload.store import read_embeddings

FAST = dict(precision="fp32", device="cpu", progress=False, token_budget=1024, num_workers=0)


def _h5(path):
    with h5py.File(path, "r") as h5:
        return [i.decode() for i in h5["ids"][:]], h5["embeddings"][:], dict(h5.attrs)


def test_v2_writes_complete_aligned_output(small_fasta, tmp_path):
    summary = run_embed(
        make_config(input=small_fasta, out_dir=tmp_path / "v2", checkpoint_every_sequences=40, **FAST)
    )
    ids, vectors, attrs = _h5(tmp_path / "v2" / "embeddings.h5")
    expected = count_frames(small_fasta)
    assert attrs["complete"] and len(ids) == expected == vectors.shape[0]
    assert vectors.shape[1] == 320 and vectors.dtype == np.float32
    assert len(set(ids)) == len(ids)
    # input order: read index, then frame F1..R3
    order = [
        (int(i.split("_")[0][4:]), "FFFRRR".index(i[-2]) + int(i[-1]) - 1 + (3 if i[-2] == "R" else 0))
        for i in ids
    ]
    assert order == sorted(order)
    assert summary["run"]["attention_path"]["sdpa_repadded"] > 0
    assert summary["run"]["alignment_check"]["passed"]
    assert summary["checkpoint"]["count"] >= 2  # checkpoint writes measured
    assert 0.5 < summary["packing"]["efficiency"] <= 1.0
    assert (tmp_path / "v2" / "telemetry.jsonl").stat().st_size > 0


def test_v1_fairesm_runs_the_same_frames(small_fasta, tmp_path):
    summary = run_embed(make_config(input=small_fasta, out_dir=tmp_path / "v1", mode="v1", **FAST))
    ids_v1, vectors, _ = _h5(tmp_path / "v1" / "embeddings.h5")
    run_embed(make_config(input=small_fasta, out_dir=tmp_path / "v2", **FAST))
    ids_v2, _, _ = _h5(tmp_path / "v2" / "embeddings.h5")
    assert ids_v1 == ids_v2
    assert summary["run"]["weights"]["source"].startswith("random")
    assert summary["config"]["v1_toks_per_batch"] == 2048


def test_rerun_without_resume_is_refused(small_fasta, tmp_path):
    cfg = make_config(input=small_fasta, out_dir=tmp_path / "o", **FAST)
    run_embed(cfg)
    with pytest.raises(UserError, match="--resume"):
        run_embed(cfg)


def test_resume_with_other_model_is_refused(small_fasta, tmp_path):
    run_embed(make_config(input=small_fasta, out_dir=tmp_path / "o", max_seconds=0.01, **FAST))
    with pytest.raises(UserError, match="model"):
        run_embed(
            make_config(input=small_fasta, out_dir=tmp_path / "o", resume=True, model="esm2_t12_35M", **FAST)
        )


def _embed_cmd(fasta, out, *extra):
    return [
        sys.executable,
        "-m",
        "perfkit",
        "embed",
        str(fasta),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--token-budget",
        "512",
        "--num-workers",
        "1",
        "--checkpoint-every",
        "40",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def kill_sample(tmp_path_factory):
    """One sample and its uninterrupted reference output, shared by the kill points."""
    folder = tmp_path_factory.mktemp("kill")
    fasta = orf_fasta(folder / "s.fa", 360, seed=3)
    subprocess.run(_embed_cmd(fasta, folder / "reference"), check=True, capture_output=True)
    return fasta, read_embeddings(folder / "reference" / "embeddings.h5")


@pytest.mark.slow
@pytest.mark.xdist_group("kill-sample")  # one xdist worker: kill_sample's reference run is made once
@pytest.mark.parametrize("kill_after_shards", [1, 4, 8])
def test_sigkill_then_resume_is_bit_identical(tmp_path, kill_sample, kill_after_shards):
    fasta, (ref_ids, ref_vectors) = kill_sample
    out = tmp_path / "killed"
    proc = subprocess.Popen(_embed_cmd(fasta, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "checkpoints").glob("shard-*.npz"))) >= kill_after_shards:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the kill point: make the sample larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "embeddings.h5").exists()

    resumed = subprocess.run(_embed_cmd(fasta, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ids, vectors = read_embeddings(out / "embeddings.h5")
    assert ids == ref_ids
    assert np.array_equal(vectors, ref_vectors)  # CPU fp32: bit-identical, so ids and vectors are aligned


@pytest.mark.slow
def test_corrupt_last_checkpoint_is_recomputed(tmp_path):
    fasta = orf_fasta(tmp_path / "s.fa", 200, seed=4)
    args = dict(input=fasta, checkpoint_every_sequences=50, **FAST)
    run_embed(make_config(out_dir=tmp_path / "ref", **args))
    ref_ids, ref_vectors = read_embeddings(tmp_path / "ref" / "embeddings.h5")
    out = tmp_path / "o"
    run_embed(make_config(out_dir=out, **args))
    (out / "embeddings.h5").unlink()
    last = sorted((out / "checkpoints").glob("shard-*.npz"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # torn write
    summary = run_embed(make_config(out_dir=out, resume=True, **args))
    assert list((out / "checkpoints").glob("*.corrupt"))
    ids, vectors = read_embeddings(out / "embeddings.h5")
    assert ids == ref_ids and np.array_equal(vectors, ref_vectors)
    assert summary["throughput"]["sequences"] > 0  # something was recomputed


def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT\n")
    out = tmp_path / "o"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit",
            "embed",
            str(bad),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.fa" in lines[0]
    assert not (out / "embeddings.h5").exists() and not (out / "summary.json").exists()


def test_time_cap_counts_steady_seconds_only(monkeypatch):
    from perfkit.workload import runner

    now = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: now[0])
    cap = runner.TimeCap(10.0, warmup_batches=2)
    now[0] = 50.0
    assert not cap.reached(1)  # batch 1 of 2 warm-up batches done: no clock yet
    now[0] = 100.0
    assert not cap.reached(2)  # warm-up done at t=100: the 10 s start here (not at 0, not at 50)
    now[0] = 105.0
    assert not cap.reached(3)  # started at 50 it would have expired
    now[0] = 110.5
    assert cap.reached(4)  # started at 105 (one batch late) it would not have
    assert not runner.TimeCap(None, 2).reached(10**6)
    now[0] = 0.0
    no_warmup = runner.TimeCap(10.0, warmup_batches=0)
    now[0] = 10.5
    assert no_warmup.reached(1)


def test_nucleotide_knobs_apply_to_the_nucleotide_stage_only(small_fasta, tmp_path):
    knobs = {"token_budget": 2048, "num_workers": 1}
    protein = make_config(input=small_fasta, out_dir=tmp_path / "p", nucleotide=knobs, **FAST)
    assert protein.for_stage() is protein  # ESM-2 keeps the run's knobs
    nucleotide = protein.model_copy(update={"model": "dnabert_mini", "out_dir": tmp_path / "n"})
    assert nucleotide.for_stage().token_budget == 2048 and nucleotide.for_stage().num_workers == 1
    assert nucleotide.for_stage().prefetch_factor == protein.prefetch_factor  # unset knobs: the run's value
    summary = run_embed(nucleotide)
    assert summary["config"]["token_budget"] == 2048  # the summary records what the stage ran with
    with pytest.raises(UserError, match="nucleotide"):
        make_config(input=small_fasta, out_dir=tmp_path / "x", nucleotide={"token_budget": 0})
    with pytest.raises(UserError, match="nucleotide"):
        # not a stage knob
        make_config(input=small_fasta, out_dir=tmp_path / "x", nucleotide={"max_reads": 5})


def test_a_folder_in_use_is_refused_at_once_naming_the_holder(small_fasta, tmp_path):
    from perfkit.workload import lock

    out = tmp_path / "o"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from perfkit.workload.lock import out_dir_lock\n"
            f"with out_dir_lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(
            UserError, match=rf"{out} is in use by another perfkit run \(pid {holder.pid} on "
        ):
            run_embed(make_config(input=small_fasta, out_dir=out, **FAST))
        assert sorted(p.name for p in out.iterdir()) == before  # the refused run wrote nothing
    finally:
        holder.communicate("")
    assert not (out / lock.OWNER_NAME).exists()
    # released when its holder ends
    run_embed(make_config(input=small_fasta, out_dir=out, max_reads=5, **FAST))
    with lock.out_dir_lock(out):  # held during a run: the run is refused; a run's own folder lock is released
        with pytest.raises(UserError, match="in use by another perfkit run"):
            run_embed(make_config(input=small_fasta, out_dir=out, resume=True, max_reads=5, **FAST))


def test_ranks_of_a_launcher_that_holds_the_lock_take_none(tmp_path):
    from perfkit.workload import lock

    env = {}
    lock.mark_held(env, tmp_path / "chain")
    assert lock.held_by_launcher(tmp_path / "chain", env)
    assert lock.held_by_launcher(tmp_path / "chain" / "protein", env)  # the chain's stage folders
    assert not lock.held_by_launcher(tmp_path / "other", env) and not lock.held_by_launcher(
        tmp_path / "chain", {}
    )
    with lock.out_dir_lock(tmp_path / "chain"):  # the launcher's
        os.environ[lock.HELD_ENV] = env[lock.HELD_ENV]
        try:
            with lock.out_dir_lock(tmp_path / "chain" / "protein"), lock.out_dir_lock(tmp_path / "chain"):
                pass  # a rank: no deadlock, no refusal
        finally:
            del os.environ[lock.HELD_ENV]


def test_truncated_frames_are_counted_through_workers_and_warned_once(tmp_path, caplog):
    from perfkit.workload.data import read_blocks, translate_block
    from perfkit.workload.translate import Truncation

    fasta = orf_fasta(tmp_path / "s.fa", 20, seed=5)
    with open(fasta, "a") as f:  # a long ORF: its six frames are longer than max_residues
        f.write(">long\n" + "GCT" * 1100 + "\n")
    expected = Truncation()
    for _, first, records in read_blocks(fasta, 1024):
        translate_block(first, records, 1022, truncated=expected)
    assert expected.frames == 6
    cfg = make_config(input=fasta, out_dir=tmp_path / "o", **{**FAST, "num_workers": 1, "token_budget": 2048})
    with caplog.at_level("WARNING", logger="perfkit.workload.runner"):
        summary = run_embed(cfg)  # counted in a DataLoader worker process, carried by the batches
    run = summary["run"]
    assert (run["truncated_sequences"], run["residues_dropped"]) == (expected.frames, expected.residues)
    assert sorted(expected.ids) == [f"long_{f}" for f in ("F1", "F2", "F3", "R1", "R2", "R3")]
    assert (tmp_path / "o" / "truncated_sequences.txt").read_text().split() == sorted(expected.ids)
    assert run["max_residues"] == 1022
    warnings = [r.getMessage() for r in caplog.records if "max_residues" in r.getMessage()]
    assert (
        len(warnings) == 1
        and "6 of" in warnings[0]
        and f"{expected.residues:,} residues dropped" in warnings[0]
    )


def test_protein_kernel_knobs_reach_the_model_and_keep_the_vectors(tmp_path):
    """embed.attention, embed.gelu_epilogue and embed.residual_epilogue change which kernels run, not the vectors
    (CPU: the fused call's GELU is the erf form there); the summary says which attention kernel ran. Few reads
    in small packs: eager flex (CPU) scores every pair of a pack, and 120 reads in 1,024-token packs took ~25 s."""
    fasta = orf_fasta(tmp_path / "s.fa", 30)
    small_packs = {**FAST, "token_budget": 256}
    plain = run_embed(make_config(input=fasta, out_dir=tmp_path / "plain", **small_packs))
    knobs = run_embed(
        make_config(
            input=fasta,
            out_dir=tmp_path / "knobs",
            attention="flex",
            gelu_epilogue=True,
            residual_epilogue=True,
            **small_packs,
        )
    )
    assert (
        plain["run"]["attention_path"]["sdpa_repadded"] > 0
        and plain["run"]["attention_path"]["flex_attention"] == 0
    )
    assert (
        knobs["run"]["attention_path"]["flex_attention"] > 0
        and knobs["run"]["attention_path"]["sdpa_repadded"] == 0
    )
    assert knobs["config"]["gelu_epilogue"] and knobs["config"]["residual_epilogue"]
    assert knobs["config"]["attention"] == "flex"
    ids_a, vectors_a, _ = _h5(tmp_path / "plain" / "embeddings.h5")
    ids_b, vectors_b, _ = _h5(tmp_path / "knobs" / "embeddings.h5")
    assert ids_a == ids_b
    np.testing.assert_allclose(vectors_b, vectors_a, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="attention"):
        make_config(input=fasta, out_dir=tmp_path / "x", attention="flash3")


def test_steady_gpu_samples_nvml_from_the_steady_start_to_the_loop_end(monkeypatch):
    # NVML must cover the same steady state as the rates: from the first batch after the warm-up
    # batches (not from the loop's start, which holds compilation) to the loop's end
    from types import SimpleNamespace

    import pandas as pd

    from perfkit.workload import runner

    batches = pd.DataFrame(
        [
            {
                "kind": "batch",
                "rank": 0,
                "stage": "embed",
                "batch": i,
                "t_arrive_s": 2.0 + i,
                "loader_wait_s": 0.5,
                "host_s": 0.0,
                "device_s": 0.4,
                "sequences": 1,
                "real_tokens": 10,
                "slot_tokens": 10,
                "budget_tokens": 10,
            }
            for i in range(6)
        ]
    )
    monkeypatch.setattr(runner.aggregate, "read_telemetry", lambda path: batches)
    asked = {}

    class Sampler:
        def summary(self, since, until):
            asked.update(since=since, until=until)
            return {}

    run = SimpleNamespace(
        telemetry=SimpleNamespace(writer=SimpleNamespace(path="unused")),
        stage="embed",
        cfg=SimpleNamespace(warmup_batches=2),
        loop_epoch=1000.0,
        sampler=Sampler(),
    )
    runner.steady_gpu(SimpleNamespace(run=run, wall_s=9.0))
    # third batch (index 2) arrives at 4.0 after 0.5 s of loader wait: its request at 3.5 starts the steady state
    assert asked == {"since": 1003.5, "until": 1009.0}
