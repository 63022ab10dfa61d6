"""Multi-process runs on CPU through torchrun (gloo): sharding, aggregation, failures, resume.

The same code path runs NCCL ranks on GPUs; only the backend and device differ.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import orf_fasta
from perfkit.benchmarks.chaos import processes_of  # the chaos benchmark's own orphan count
from perfkit.workload import distributed
from perfkit.workload.config import make_config
from perfkit.workload.data import count_frames
from perfkit.workload.store import read_embeddings

FLAGS = ["--device", "cpu", "--precision", "fp32", "--token-budget", "512", "--num-workers", "0",
         "--block-reads", "16", "--checkpoint-every", "40", "--no-progress"]


def _embed_cmd(fasta, out, *extra):
    return [sys.executable, "-m", "perfkit", "embed", str(fasta), "-o", str(out), *FLAGS, *extra]


# one thread per rank (torchrun's default for N > 1, here for N = 1 too): fair, and robust on a busy CPU
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _embed(fasta, out, *extra, env=None, timeout=180):
    return subprocess.run(_embed_cmd(fasta, out, *extra), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ONE_THREAD, **(env or {})})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One sample embedded by 1 rank and by 2 ranks (both through torchrun)."""
    folder = tmp_path_factory.mktemp("dist")
    fasta = orf_fasta(folder / "s.fa", 240, seed=1)
    done = _embed(fasta, folder / "n2", "--nproc", "2")  # the command line a user types
    assert done.returncode == 0, done.stderr
    cfg = make_config(input=fasta, out_dir=folder / "n1", device="cpu", precision="fp32", token_budget=512,
                      num_workers=0, block_reads=16, checkpoint_every_sequences=40, progress=False)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ.update(ONE_THREAD)
    try:
        single = distributed.run_multi(cfg, 1, gpus=False)  # what the notebooks call
    finally:
        os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.update(OMP_NUM_THREADS=saved)
    return fasta, folder, {1: single, 2: json.loads((folder / "n2" / "summary.json").read_text())}


def test_two_ranks_give_the_output_of_one(runs):
    fasta, folder, _ = runs
    ids_1, vectors_1 = read_embeddings(folder / "n1" / "embeddings.h5")  # refuses an incomplete file
    ids_2, vectors_2 = read_embeddings(folder / "n2" / "embeddings.h5")
    assert ids_2 == ids_1 and len(ids_1) == count_frames(fasta)
    # ranks pack different subsets, so batch composition differs: equal within fp32 tolerance, not bitwise
    np.testing.assert_allclose(vectors_2, vectors_1, rtol=1e-5, atol=1e-6)
    shards = sorted(p.name[:10] for p in (folder / "n2" / "checkpoints").glob("shard-*.npz"))
    assert set(shards) == {"shard-r000", "shard-r001"}
    assert (folder / "n2" / "telemetry.rank0.jsonl").stat().st_size and (folder / "n2" / "telemetry.rank1.jsonl").stat().st_size


def test_summary_keeps_every_rank_and_sums_throughput(runs):
    fasta, _, summaries = runs
    summary = summaries[2]
    per_rank, total = summary["per_rank"], summary["throughput"]
    assert sorted(per_rank) == ["0", "1"] and total["ranks"] == 2
    assert total["sequences"] == sum(r["sequences"] for r in per_rank.values()) == count_frames(fasta)
    assert total["steady_tok_per_s"] == pytest.approx(sum(r["steady_tok_per_s"] for r in per_rank.values()))
    assert total["rank_imbalance"] >= 1.0
    assert sorted(summary["gpu"]) == ["0", "1"]  # each rank's sampler summary
    ranks = summary["distributed"]["ranks"]
    assert sum(r["frames_translated"] for r in ranks.values()) == summary["run"]["frames_translated"] == count_frames(fasta)
    plan = summary["distributed"]["plan"]
    assert sum(plan["planned_share"].values()) == pytest.approx(1.0)
    # a byte plan: the ranks' planned bytes are the whole file, each rank one contiguous run of blocks
    assert sum(plan["planned_weight"].values()) == fasta.stat().st_size
    assert plan["weight"].startswith("bytes of FASTA") and "own blocks' byte ranges" in plan["worker_input"]
    assert summary["run"]["alignment_check"]["passed"] and summary["run"]["alignment_check"]["checked"] > 0
    assert summary["distributed"]["backend"] == "gloo"
    assert summary["distributed"]["nccl_env"]["NCCL_NVLS_ENABLE"] == "0"


def test_scaling_figures(runs):
    _, _, summaries = runs
    figures = distributed.scaling(summaries[1], summaries[2])
    single, multi = summaries[1]["throughput"], summaries[2]["throughput"]
    assert figures["factor"] == pytest.approx(multi["steady_tok_per_s"] / single["steady_tok_per_s"])
    assert figures["wall_factor"] == pytest.approx(single["wall_s"] / multi["wall_s"])
    assert figures["efficiency"] == pytest.approx(figures["factor"] / 2)
    assert sorted(figures["per_rank"]) == ["0", "1"]
    util = figures["per_rank"]["0"]["gpu_utilization_mean"]
    assert util["measured"] is False and util["reason"]  # no NVIDIA driver here: marked, never a zero


def test_each_rank_samples_its_own_physical_gpu():
    opened = []
    env = {"CUDA_VISIBLE_DEVICES": "3,5", "LOCAL_RANK": "1"}
    for local_rank in (0, 1):
        sampler = distributed.sampler_for_rank(local_rank, env, device_factory=lambda p: opened.append(p))
        assert sampler.physical_index == [3, 5][local_rank]
    assert opened == [3, 5]


def test_launcher_drops_only_its_own_flags():
    argv = ["-v", "embed", "x.fa", "-o", "out", "--nproc", "2", "--gpus=2", "--np", "3", "--num-workers", "1"]
    assert distributed.child_args(argv) == ["-v", "embed", "x.fa", "-o", "out", "--num-workers", "1"]


def test_more_gpus_than_visible_is_refused_before_work(small_fasta, tmp_path):
    out = tmp_path / "o"
    result = subprocess.run([sys.executable, "-m", "perfkit", "embed", str(small_fasta), "-o", str(out), "--gpus", "4",
                             "--no-progress"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: asked for 4 GPUs,") and "visible" in lines[0]
    assert not out.exists()


def test_a_failing_rank_fails_the_run_quickly(runs, tmp_path):
    fasta, _, _ = runs
    start = time.monotonic()
    result = _embed(fasta, tmp_path / "o", "--nproc", "2", env={distributed.FAIL_RANK_ENV: "1"}, timeout=120)
    assert time.monotonic() - start < 120
    assert result.returncode != 0
    assert "error: rank 1 of 2" in result.stderr and "fault injected" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the 2-rank run failed")
    assert not (tmp_path / "o" / "embeddings.h5").exists()


@pytest.mark.slow
def test_resume_after_killing_the_whole_launch(runs, tmp_path):
    fasta, folder, _ = runs
    out = tmp_path / "killed"
    launcher = subprocess.Popen(_embed_cmd(fasta, out, "--nproc", "2"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **ONE_THREAD})
    deadline = time.time() + 120
    while time.time() < deadline and launcher.poll() is None:
        if len(list((out / "checkpoints").glob("shard-*.npz"))) >= 2:
            break
        time.sleep(0.01)
    assert launcher.poll() is None, "the run ended before the kill point: make the sample larger"
    processes = psutil.Process(launcher.pid).children(recursive=True)  # torchrun and its ranks
    os.killpg(launcher.pid, signal.SIGKILL)  # launcher + torchrun; ranks live in their own sessions
    launcher.wait()
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"ranks outlived their torchrun agent: {alive}"
    assert not (out / "embeddings.h5").exists()

    resumed = _embed(fasta, out, "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    ids, vectors = read_embeddings(out / "embeddings.h5")
    ref_ids, ref_vectors = read_embeddings(folder / "n2" / "embeddings.h5")
    assert ids == ref_ids
    # same ranks -> same token plan -> same batches: bitwise equal to the uninterrupted 2-rank run
    assert np.array_equal(vectors, ref_vectors)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["throughput"]["sequences"] < len(ids)  # only the unfinished part was embedded


def test_launcher_compares_a_resume_with_the_precision_the_ranks_recorded(small_fasta, tmp_path):
    from perfkit.workload.runner import check_before_work, prepare_out_dir

    cfg = make_config(input=small_fasta, out_dir=tmp_path / "o", device="cpu", progress=False)  # precision auto
    prepare_out_dir(check_before_work(cfg))  # what rank 0 records: the resolved precision (fp32 on CPU)
    # the launcher compared "auto" with it and refused every resume of a run started without --precision
    assert distributed.check_launch(cfg.model_copy(update={"resume": True}), 2, gpus=False) == "cpu"


def test_contiguous_blocks_cut_at_equal_shares():
    from perfkit.workload.distributed import contiguous_blocks

    plan = contiguous_blocks(np.array([10, 10, 10, 10, 10, 10, 10, 30]), 2)
    assert [p.tolist() for p in plan] == [[0, 1, 2, 3, 4], [5, 6, 7]]  # 50 | 50
    plan = contiguous_blocks(np.ones(10, dtype=np.int64), 3)
    assert np.concatenate(plan).tolist() == list(range(10)) and [len(p) for p in plan] == [3, 4, 3]
    assert [len(p) for p in contiguous_blocks(np.array([5]), 2)] == [0, 1] or \
        [len(p) for p in contiguous_blocks(np.array([5]), 2)] == [1, 0]  # fewer blocks than ranks: one empty


def test_block_sizes_scan_matches_the_parser(tmp_path):
    """The vectorised scan finds the same blocks as read_blocks (and bytes follow bases); gzip and
    chunked input fall back to parsing."""
    import gzip

    from perfkit.workload.data import block_sizes, read_blocks

    fasta = orf_fasta(tmp_path / "s.fa", 57, seed=3)
    for block_reads, max_reads in ((10, None), (7, 30), (100, None)):
        sizes = block_sizes(fasta, block_reads=block_reads, max_reads=max_reads, scan_bytes=97)  # scan in pieces
        blocks = list(read_blocks(fasta, block_reads, max_reads))
        assert len(sizes) == len(blocks)
        text = fasta.read_bytes()
        assert sizes.sum() <= len(text) and (max_reads or sizes.sum() == len(text))
        bases = np.array([sum(len(s) for _, s in recs) for _, _, recs in blocks])
        assert np.all(sizes > bases)  # bytes = bases + headers + newlines
    packed = tmp_path / "s.fa.gz"
    packed.write_bytes(gzip.compress(fasta.read_bytes()))
    assert block_sizes(packed, block_reads=10).tolist() == [
        sum(len(s) for _, s in recs) for _, _, recs in read_blocks(fasta, 10)]


def test_two_ranks_count_truncation_resume_with_nothing_left_and_keep_their_folder_locked(tmp_path):
    from perfkit.workload import lock
    from perfkit.workload.data import read_blocks, translate_block
    from perfkit.workload.translate import Truncation

    fasta = orf_fasta(tmp_path / "s.fa", 64, seed=2)
    params = tmp_path / "p.yaml"
    params.write_text("embed:\n  max_residues: 20\n")  # most frames are longer: both ranks cut some
    expected = Truncation()
    for _, first, records in read_blocks(fasta, 16):
        translate_block(first, records, 20, truncated=expected)
    out = tmp_path / "o"
    # the launcher holds the folder's lock for the whole launch: its ranks must not wait for it, nor refuse
    done = _embed(fasta, out, "--nproc", "2", "--params", str(params))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    ranks = summary["distributed"]["ranks"]
    assert all(r["truncated_sequences"] > 0 for r in ranks.values())
    assert summary["run"]["truncated_sequences"] == sum(r["truncated_sequences"] for r in ranks.values()) == expected.frames
    listed = Path(summary["run"]["truncated_ids_file"]).read_text().split()
    assert listed == sorted(expected.ids) and len(listed) == expected.frames  # both ranks' ids, in one file
    assert summary["run"]["residues_dropped"] == expected.residues
    warned = [line for line in done.stderr.splitlines() if "max_residues=20" in line]
    assert len(warned) == 1 and f"{expected.frames:,} of" in warned[0]  # rank 0's, for the whole run

    resumed = _embed(fasta, out, "--nproc", "2", "--params", str(params), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"nothing left to do: {count_frames(fasta, max_residues=20)} sequences already embedded" in resumed.stdout
    ids, _ = read_embeddings(out / "embeddings.h5")

    other = tmp_path / "other.fa"
    other.write_text(fasta.read_text().replace(">read", ">renamed"))
    refused = _embed(other, out, "--nproc", "2", "--params", str(params), "--resume")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("error: --resume with another input")
    with lock.out_dir_lock(out):  # another run holds the folder: refused before torchrun starts, nothing written
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        busy = _embed(fasta, out, "--nproc", "2", "--params", str(params), "--resume")
        assert busy.returncode == 2
        assert busy.stderr.strip().splitlines()[-1].startswith(f"error: {out} is in use by another perfkit run (pid {os.getpid()}")
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert read_embeddings(out / "embeddings.h5")[0] == ids


def test_killing_the_launchers_group_as_ranks_start_leaves_no_process(small_fasta, tmp_path):
    """Finding 3: ranks run in their own sessions; killed while importing torch (before the process group) they
    were orphaned. Each generation now dies with its parent (perfkit.lifeline)."""
    out = tmp_path / "orphan-check"
    launcher = subprocess.Popen(_embed_cmd(small_fasta, out, "--nproc", "2"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **ONE_THREAD})
    try:
        deadline = time.time() + 60
        ranks = []
        while time.time() < deadline and launcher.poll() is None:
            try:  # torchrun's agent and its two ranks
                ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "perfkit" in " ".join(p.cmdline())]
            except psutil.Error:
                pass
            if len(ranks) >= 2:
                break
            time.sleep(0.02)
        assert len(ranks) >= 2 and launcher.poll() is None, "the ranks never started"
        os.killpg(launcher.pid, signal.SIGKILL)  # what `kill -9 -- -PGID` of the launcher does
        launcher.wait()
        end = time.time() + 10
        while time.time() < end and processes_of(str(out)):
            time.sleep(0.1)
        assert not processes_of(str(out)), "perfkit processes outlived their launcher"
    finally:
        for proc in processes_of(str(out)):  # never leave one behind, even when the test fails
            proc.kill()
