"""Multi-process runs on CPU through torchrun (gloo): sharding, aggregation, failures, resume.

The same code path runs NCCL ranks on GPUs; only the backend and device differ.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import orf_fasta
from perfkit.benchmarks.chaos import processes_of  # the chaos benchmark's own orphan count
from perfkit.errors import UserError
from perfkit import scaling_maths
from perfkit.results import NotMeasured
from perfkit.workload import distributed, launch, node_view
from perfkit.workload.config import make_config
from perfkit.workload.data import count_frames
from perfkit.workload.store import read_embeddings

FLAGS = [
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--token-budget",
    "512",
    "--num-workers",
    "0",
    "--block-reads",
    "16",
    "--checkpoint-every",
    "40",
    "--no-progress",
]


def _embed_cmd(fasta, out, *extra):
    return [sys.executable, "-m", "perfkit", "embed", str(fasta), "-o", str(out), *FLAGS, *extra]


# one thread per rank (torchrun's default for N > 1, here for N = 1 too): fair, and robust on a busy CPU
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _embed(fasta, out, *extra, env=None, timeout=180):
    return subprocess.run(
        _embed_cmd(fasta, out, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ONE_THREAD, **(env or {})},
    )


# the tests that read the reference runs run in one xdist worker, so that `runs` is built once (~40 s of CPU)
REFERENCE_RUNS = pytest.mark.xdist_group("distributed-reference-runs")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample of the reference runs, for tests that only need its reads."""
    return orf_fasta(tmp_path_factory.mktemp("dist-sample") / "s.fa", 240, seed=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One sample embedded by 1 rank and by 2 ranks (both through torchrun)."""
    folder = tmp_path_factory.mktemp("dist")
    fasta = orf_fasta(folder / "s.fa", 240, seed=1)
    done = _embed(fasta, folder / "n2", "--nproc", "2")  # the command line a user types
    assert done.returncode == 0, done.stderr
    cfg = make_config(
        input=fasta,
        out_dir=folder / "n1",
        device="cpu",
        precision="fp32",
        token_budget=512,
        num_workers=0,
        block_reads=16,
        checkpoint_every_sequences=40,
        progress=False,
    )
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ.update(ONE_THREAD)
    try:
        single = launch.run_multi(cfg, 1, gpus=False)  # what the notebooks call
    finally:
        os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.update(OMP_NUM_THREADS=saved)
    return fasta, folder, {1: single, 2: json.loads((folder / "n2" / "summary.json").read_text())}


@REFERENCE_RUNS
def test_two_ranks_give_the_output_of_one(runs):
    fasta, folder, _ = runs
    ids_1, vectors_1 = read_embeddings(folder / "n1" / "embeddings.h5")  # refuses an incomplete file
    ids_2, vectors_2 = read_embeddings(folder / "n2" / "embeddings.h5")
    assert ids_2 == ids_1 and len(ids_1) == count_frames(fasta)
    # ranks pack different subsets, so batch composition differs: equal within fp32 tolerance, not bitwise
    np.testing.assert_allclose(vectors_2, vectors_1, rtol=1e-5, atol=1e-6)
    shards = sorted(p.name[:10] for p in (folder / "n2" / "checkpoints").glob("shard-*.npz"))
    assert set(shards) == {"shard-r000", "shard-r001"}
    assert (folder / "n2" / "telemetry.rank0.jsonl").stat().st_size and (
        folder / "n2" / "telemetry.rank1.jsonl"
    ).stat().st_size


@REFERENCE_RUNS
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
    assert (
        sum(r["frames_translated"] for r in ranks.values())
        == summary["run"]["frames_translated"]
        == count_frames(fasta)
    )
    plan = summary["distributed"]["plan"]
    assert sum(plan["planned_share"].values()) == pytest.approx(1.0)
    # a byte plan: the ranks' planned bytes are the whole file, each rank one contiguous run of blocks
    assert sum(plan["planned_weight"].values()) == fasta.stat().st_size
    assert plan["weight"].startswith("bytes of FASTA") and "own blocks' byte ranges" in plan["worker_input"]
    assert summary["run"]["alignment_check"]["passed"] and summary["run"]["alignment_check"]["checked"] > 0
    assert summary["distributed"]["backend"] == "gloo"
    assert summary["distributed"]["nccl_env"]["NCCL_NVLS_ENABLE"] == "0"


@REFERENCE_RUNS
def test_scaling_figures(runs):
    _, _, summaries = runs
    figures = scaling_maths.rank_scaling(summaries[1], summaries[2])
    single, multi = summaries[1]["throughput"], summaries[2]["throughput"]
    assert figures.factor == pytest.approx(multi["steady_tok_per_s"] / single["steady_tok_per_s"])
    assert figures.wall_factor == pytest.approx(single["wall_s"] / multi["wall_s"])
    assert figures.efficiency == pytest.approx(figures.factor / 2)
    assert sorted(figures.per_rank) == ["0", "1"]
    util = figures.per_rank["0"].gpu_utilization_mean
    assert isinstance(util, NotMeasured) and util.reason  # no NVIDIA driver here: marked, never a zero


def test_each_rank_samples_its_own_physical_gpu():
    opened = []
    env = {"CUDA_VISIBLE_DEVICES": "3,5", "LOCAL_RANK": "1"}
    for local_rank in (0, 1):
        sampler = distributed.sampler_for_rank(local_rank, env, device_factory=lambda p: opened.append(p))
        assert sampler.physical_index == [3, 5][local_rank]
    assert opened == [3, 5]


def test_more_gpus_than_visible_is_refused_before_work(small_fasta, tmp_path):
    out = tmp_path / "o"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "perfkit",
            "embed",
            str(small_fasta),
            "-o",
            str(out),
            "--gpus",
            "4",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: asked for 4 GPUs,") and "visible" in lines[0]
    assert not out.exists()


def test_a_failing_rank_fails_the_run_quickly(sample, tmp_path):
    fasta = sample
    start = time.monotonic()
    result = _embed(fasta, tmp_path / "o", "--nproc", "2", env={distributed.FAIL_RANK_ENV: "1"}, timeout=120)
    assert time.monotonic() - start < 120
    assert result.returncode != 0
    assert "error: rank 1 of 2" in result.stderr and "fault injected" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the 2-rank run failed")
    assert not (tmp_path / "o" / "embeddings.h5").exists()


@REFERENCE_RUNS
@pytest.mark.slow
def test_resume_after_killing_the_whole_launch(runs, tmp_path):
    fasta, folder, _ = runs
    out = tmp_path / "killed"
    launcher = subprocess.Popen(
        _embed_cmd(fasta, out, "--nproc", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **ONE_THREAD},
    )
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


def test_block_sizes_scan_matches_the_parser(tmp_path):
    """The vectorised scan finds the same blocks as read_blocks (and bytes follow bases); gzip and
    chunked input fall back to parsing."""
    import gzip

    from perfkit.workload.data import block_sizes, read_blocks

    fasta = orf_fasta(tmp_path / "s.fa", 57, seed=3)
    for block_reads, max_reads in ((10, None), (7, 30), (100, None)):
        # scan in pieces
        sizes = block_sizes(fasta, block_reads=block_reads, max_reads=max_reads, scan_bytes=97)
        blocks = list(read_blocks(fasta, block_reads, max_reads))
        assert len(sizes) == len(blocks)
        text = fasta.read_bytes()
        assert sizes.sum() <= len(text) and (max_reads or sizes.sum() == len(text))
        bases = np.array([sum(len(s) for _, s in recs) for _, _, recs in blocks])
        assert np.all(sizes > bases)  # bytes = bases + headers + newlines
    packed = tmp_path / "s.fa.gz"
    packed.write_bytes(gzip.compress(fasta.read_bytes()))
    assert block_sizes(packed, block_reads=10).tolist() == [
        sum(len(s) for _, s in recs) for _, _, recs in read_blocks(fasta, 10)
    ]


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
    assert (
        summary["run"]["truncated_sequences"]
        == sum(r["truncated_sequences"] for r in ranks.values())
        == expected.frames
    )
    listed = Path(summary["run"]["truncated_ids_file"]).read_text().split()
    assert listed == sorted(expected.ids) and len(listed) == expected.frames  # both ranks' ids, in one file
    assert summary["run"]["residues_dropped"] == expected.residues
    warned = [line for line in done.stderr.splitlines() if "max_residues=20" in line]
    assert len(warned) == 1 and f"{expected.frames:,} of" in warned[0]  # rank 0's, for the whole run

    resumed = _embed(fasta, out, "--nproc", "2", "--params", str(params), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"nothing left to do: {count_frames(fasta, max_residues=20)} sequences already embedded"
        in resumed.stdout
    )
    ids, _ = read_embeddings(out / "embeddings.h5")

    other = tmp_path / "other.fa"
    other.write_text(fasta.read_text().replace(">read", ">renamed"))
    refused = _embed(other, out, "--nproc", "2", "--params", str(params), "--resume")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: --resume with another input"
    )
    # another run holds the folder: refused before torchrun starts, nothing written
    with lock.out_dir_lock(out):
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        busy = _embed(fasta, out, "--nproc", "2", "--params", str(params), "--resume")
        assert busy.returncode == 2
        assert (
            busy.stderr.strip()
            .splitlines()[-1]
            .startswith(f"error: {out} is in use by another perfkit run (pid {os.getpid()}")
        )
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert read_embeddings(out / "embeddings.h5")[0] == ids


def test_killing_the_launchers_group_as_ranks_start_leaves_no_process(small_fasta, tmp_path):
    """Finding 3: ranks run in their own sessions; killed while importing torch (before the process group) they
    were orphaned. Each generation now dies with its parent (perfkit.lifeline)."""
    out = tmp_path / "orphan-check"
    launcher = subprocess.Popen(
        _embed_cmd(small_fasta, out, "--nproc", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **ONE_THREAD},
    )
    try:
        deadline = time.time() + 60
        ranks = []
        while time.time() < deadline and launcher.poll() is None:
            try:  # torchrun's agent and its two ranks
                ranks = [
                    p
                    for p in psutil.Process(launcher.pid).children(recursive=True)
                    if "perfkit" in " ".join(p.cmdline())
                ]
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


# ---------------------------------------------------------------------------- several nodes (on localhost)

# small timeouts: a node that never comes, or dies, fails the others in seconds, not minutes
NODE_ENV = {**ONE_THREAD, distributed.RDZV_TIMEOUT_ENV: "60", distributed.TIMEOUT_ENV: "30"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_flags(node: int, port: int) -> list[str]:
    """Node `node` of 2, one CPU rank each, meeting at 127.0.0.1:port."""
    return ["--nproc", "1", "--nnodes", "2", "--node-rank", str(node), "--rdzv-endpoint", f"127.0.0.1:{port}"]


def start_nodes(command_for, logs: Path, started: int = 2, env=None) -> list[subprocess.Popen]:
    """`command_for(node, port)` for nodes 0 .. started - 1, concurrently, as a host of each would start it;
    each node's stdout/stderr go to logs/node{R}.{out,err}."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    nodes = []
    for node in range(started):
        with open(logs / f"node{node}.out", "w") as out, open(logs / f"node{node}.err", "w") as err:
            nodes.append(
                subprocess.Popen(
                    command_for(node, port),
                    stdout=out,
                    stderr=err,
                    env={**os.environ, **NODE_ENV, **(env or {})},
                    start_new_session=True,
                )
            )
    return nodes


def run_nodes(
    command_for, logs: Path, started: int = 2, env=None, timeout: float = 150
) -> list[tuple[int, str, str]]:
    """start_nodes, then each node's (exit code, stdout, stderr); none is left running."""
    nodes = start_nodes(command_for, logs, started, env)
    try:
        for node in nodes:
            node.wait(timeout=timeout)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    return [
        (node.returncode, (logs / f"node{i}.out").read_text(), (logs / f"node{i}.err").read_text())
        for i, node in enumerate(nodes)
    ]


@REFERENCE_RUNS
def test_two_nodes_give_the_output_of_one_node_with_as_many_ranks(runs, tmp_path):
    """2 nodes x 1 rank through torchrun's c10d rendezvous: the same plan as 1 node x 2 ranks, so the same
    batches: ids and vectors bitwise equal to that run's (and within fp32 tolerance of the 1-process run)."""
    fasta, folder, _ = runs
    out = tmp_path / "shared"
    done = run_nodes(lambda node, port: _embed_cmd(fasta, out, *node_flags(node, port)), tmp_path / "logs")
    assert [code for code, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    ids, vectors = read_embeddings(out / "embeddings.h5")
    ref_ids, ref_vectors = read_embeddings(folder / "n2" / "embeddings.h5")
    assert ids == ref_ids and np.array_equal(vectors, ref_vectors)
    one_process = read_embeddings(folder / "n1" / "embeddings.h5")[1]
    np.testing.assert_allclose(vectors, one_process, rtol=1e-5, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed"]["world"] == 2 and summary["distributed"]["nodes"] == 2
    assert sorted(r["node"] for r in summary["distributed"]["ranks"].values()) == [0, 1]
    # one line of results, from whichever node torchrun made rank 0; no node printed an error
    assert sum("sequences" in out_text for _, out_text, _ in done) == 1
    assert not any(line.startswith("error") for _, _, err in done for line in err.splitlines())
    assert not (out / node_view.SHARED_CHECK_NAME).exists()


@REFERENCE_RUNS
def test_a_resume_on_two_nodes_continues_a_run_of_one_node(runs, tmp_path):
    """A 1-node x 2-rank run that lost its last shards (as if killed), resumed by 2 nodes x 1 rank: only
    the missing sequences are embedded, and the output is bitwise the uninterrupted run's (same ranks,
    same plan)."""
    import shutil

    fasta, folder, _ = runs
    out = tmp_path / "shared"
    shutil.copytree(folder / "n2", out)
    (out / "embeddings.h5").unlink()
    for rank in (0, 1):
        newest = sorted((out / "checkpoints").glob(f"shard-r{rank:03d}-*.npz"))[-2:]
        assert newest, "the reference run wrote no shard for this rank"
        for shard in newest:
            shard.unlink()
    done = run_nodes(
        lambda node, port: _embed_cmd(fasta, out, "--resume", *node_flags(node, port)), tmp_path / "logs"
    )
    assert [code for code, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    ids, vectors = read_embeddings(out / "embeddings.h5")
    ref_ids, ref_vectors = read_embeddings(folder / "n2" / "embeddings.h5")
    assert ids == ref_ids and np.array_equal(vectors, ref_vectors)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["throughput"]["sequences"] < len(ids) and summary["distributed"]["nodes"] == 2


@pytest.mark.slow
def test_a_killed_node_makes_the_other_fail_within_the_timeout(sample, tmp_path):
    fasta = sample
    out = tmp_path / "shared"
    nodes = start_nodes(lambda node, port: _embed_cmd(fasta, out, *node_flags(node, port)), tmp_path / "logs")
    bound = int(NODE_ENV[distributed.TIMEOUT_ENV]) + 30
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list((out / "checkpoints").glob("shard-*.npz")):
            time.sleep(0.01)
        assert all(node.poll() is None for node in nodes), "a node ended before the kill point"
        os.killpg(nodes[1].pid, signal.SIGKILL)  # node 1's launcher and torchrun; its rank dies with torchrun
        nodes[1].wait()
        killed = time.monotonic()
        nodes[0].wait(timeout=bound)
        assert time.monotonic() - killed < bound
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        for proc in processes_of(str(out)):
            proc.kill()
    assert nodes[0].returncode != 0
    err = (tmp_path / "logs" / "node0.err").read_text()
    assert err.strip().splitlines()[-1].startswith("error: the 2-node run (1 rank per node) failed")
    lost = [line for line in err.splitlines() if line.startswith("error: rank")]
    assert lost and "lost contact with another rank" in lost[0] and "nodes 0 on" in lost[0], err[-3000:]
    assert not (out / "embeddings.h5").exists() and not (out / "summary.json").exists()


def test_a_node_whose_peers_never_come_gives_up_after_the_rendezvous_timeout(small_fasta, tmp_path):
    out = tmp_path / "shared"
    start = time.monotonic()
    done = run_nodes(
        lambda node, port: _embed_cmd(small_fasta, out, *node_flags(node, port)),  # node 0 of 2
        tmp_path / "logs",
        started=1,
        env={distributed.RDZV_TIMEOUT_ENV: "3"},
    )
    code, _, err = done[0]
    assert code != 0 and time.monotonic() - start < 40
    assert "RendezvousTimeoutError" in err
    assert err.strip().splitlines()[-1].startswith("error: the 2-node run (1 rank per node) failed")
    assert "RendezvousTimeoutError: the nodes never met" in err.strip().splitlines()[-1]
    assert not (out / "checkpoints").exists()


def test_a_node_that_reads_another_input_stops_every_node(sample, tmp_path):
    fasta = sample
    other = tmp_path / "other.fa"
    other.write_text(fasta.read_text().replace(">read1\n", ">read1x\n", 1))  # same reads, one byte more
    out = tmp_path / "shared"
    done = run_nodes(
        lambda node, port: _embed_cmd(other if node == 1 else fasta, out, *node_flags(node, port)),
        tmp_path / "logs",
    )
    for code, _, err in done:
        assert code != 0
        lines = [line for line in err.splitlines() if line.startswith("error: node")]
        # one line per node (its local rank 0's), naming the node whose input differs from rank 0's
        assert len(lines) == 1 and "sees another input than rank 0 on node" in lines[0], err[-3000:]
        assert "give every node the same input file" in lines[0]
    assert not list((out / "checkpoints").glob("shard-*"))


def test_a_rank_that_sees_another_folder_input_or_settings_names_its_node(tmp_path, monkeypatch):
    monkeypatch.setattr(node_view, "SHARED_CHECK_WAIT_S", 0.0)
    fasta = orf_fasta(tmp_path / "s.fa", 3)
    cfg = make_config(input=fasta, out_dir=tmp_path / "local-copy", device="cpu")
    rank0 = {
        "token": "abc",
        "node": 0,
        "host": "gpu-a",
        "input": node_view.seen_input(fasta),
        "result_fields": cfg.model_copy(update={"precision": "fp32"}).result_fields(),
    }
    info = distributed.RankInfo(rank=3, world=4, local_rank=1, node=1)
    problem, fix = node_view._what_differs(cfg, info, rank0, node_view.seen_input(fasta))
    assert problem.startswith("node 1 (") and "rank 3) does not see the output folder" in problem
    assert "rank 0 on node 0 (gpu-a)" in problem and "no such folder there" in problem
    assert "--out" in fix and "share" in fix
    (tmp_path / "local-copy").mkdir()
    (tmp_path / "local-copy" / node_view.SHARED_CHECK_NAME).write_text("abc")  # the folder rank 0 prepared
    assert node_view._what_differs(cfg, info, rank0, node_view.seen_input(fasta)) is None
    problem, _ = node_view._what_differs(cfg, info, rank0, node_view.seen_input(tmp_path / "missing.fa"))
    assert "cannot read the input" in problem
    other_model = cfg.model_copy(update={"model": "esm2_t12_35M"})  # a node given another command line
    problem, fix = node_view._what_differs(other_model, info, rank0, node_view.seen_input(fasta))
    assert "runs with other settings than rank 0" in problem
    assert "model esm2_t12_35M (rank 0: esm2_t6_8M)" in problem
    assert fix == "run the same command on every node; only --node-rank differs"


def test_the_launchers_of_two_nodes_take_their_own_lock_and_another_run_is_refused(
    small_fasta, tmp_path, capsys
):
    """Node 0's launcher holds the run's lock, node R's its own: one run's launchers never block each
    other, a second run is refused (writing nothing) at whichever node it starts."""
    from perfkit.cli import main
    from perfkit.workload import lock

    out = tmp_path / "o"
    args = ["embed", str(small_fasta), "-o", str(out), *FLAGS]
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    with lock.out_dir_lock(out), lock.out_dir_lock(out, 1):  # another run's node 0 and node 1
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        assert main([*args, *node_flags(0, 29500)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {out} is in use by another perfkit run ({holder}) — wait for that run to end, or "
            "choose another --out folder"
        )
        assert main([*args, *node_flags(1, 29500)]) == 2
        refused = capsys.readouterr().err.strip()
        assert refused.startswith(f"error: {out} is in use as node 1 by another perfkit run ({holder})")
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with lock.out_dir_lock(out):  # this run's node 0 holds the folder: node 1's launcher takes its own lock
        with lock.out_dir_lock(out, 1):
            pass
        with pytest.raises(UserError, match="in use by another perfkit run"), lock.out_dir_lock(out):
            pass


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--nproc", "1", "--nnodes", "2"],
            "error: --nnodes 2: no --rdzv-endpoint — pass --rdzv-endpoint HOST:PORT",
        ),
        (
            ["--nproc", "1", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"],
            "error: --node-rank 2: must be 0 to --nnodes - 1 (1) — number the nodes 0 to N-1",
        ),
        (["--nproc", "1", "--node-rank", "1"], "error: --node-rank 1: must be 0 to --nnodes - 1 (0)"),
        (["--nproc", "1", "--nnodes", "0"], "error: --nnodes 0: must be 1 or more"),
        (
            ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "node0"],
            "error: --rdzv-endpoint node0: not HOST:PORT — ",
        ),
        (
            ["--nnodes", "2", "--rdzv-endpoint", "h:1"],
            "error: --nnodes 2: the node flags place torchrun ranks, and no --gpus/--nproc asks for any — add ",
        ),
        (["--rdzv-endpoint", "h:1"], "error: --rdzv-endpoint h:1: the node flags place torchrun ranks"),
    ],
    ids=[
        "no-endpoint",
        "node-rank-too-big",
        "node-rank-without-nnodes",
        "no-nodes",
        "endpoint-without-port",
        "no-nproc",
        "endpoint-alone",
    ],
)
def test_node_flags_that_cannot_work_are_one_line_errors_before_anything_is_written(
    small_fasta, tmp_path, capsys, flags, message
):
    from perfkit.cli import main

    out = tmp_path / "o"
    assert main(["embed", str(small_fasta), "-o", str(out), *FLAGS, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()
