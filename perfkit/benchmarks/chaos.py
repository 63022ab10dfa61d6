"""Chaos: SIGKILL runs at random times, resume them, and compare with an uninterrupted run.

Three paths, taken in turn: `perfkit embed` (one process), `perfkit predict` (the chain; every other predict
trial, the first too, is killed in the protein stage, once a protein shard is on disk: part-written shards), and
`perfkit embed --nproc 2` (torchrun, CPU ranks). Each path runs once uninterrupted (the reference). A trial
starts the command in its own session, kills the launcher's whole process group (SIGKILL, `kill -9 -- -PGID`)
at a uniform random time in [0.05, 0.95] x the reference's wall time (or 0-1 s after the protein stage's
first shard),
then counts the perfkit processes of that folder still alive `--grace` seconds later (orphans: ranks in their
own sessions, say), kills them, and resumes with `--resume` to the end.

Definitions:
- identical: embed, the embeddings.h5 ids equal and the vectors bitwise equal to the reference's; predict, both
  prediction CSVs (per frame, per read) byte-for-byte equal to the reference's;
- orphans: processes whose command line holds the trial's output folder, alive `--grace` s after the kill;
- time lost: (seconds to the kill + the resume's wall time) - the reference's wall time;
- killed: the run was still going at the kill (a run that ended first is resumed and compared all the same).

Prints and writes (--out) JSON: every trial, and per path and overall: trials, identical, orphans, time lost.
Run: python -m perfkit.benchmarks.chaos --trials 21 --seed 0 --out chaos.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

PATHS = ("embed", "predict", "embed_nproc2")


def command(path: str, fasta: Path, out: Path, args) -> list[str]:
    verb = "predict" if path == "predict" else "embed"
    cmd = [
        sys.executable,
        "-m",
        "perfkit",
        verb,
        str(fasta),
        "-o",
        str(out),
        "--model",
        args.model,
        "--precision",
        args.precision,
        "--device",
        args.device,
        "--no-progress",
        "--num-workers",
        "0",
        "--token-budget",
        str(args.token_budget),
        "--checkpoint-every",
        str(args.checkpoint_every),
        "--block-reads",
        str(args.block_reads),
    ]
    if path == "predict":
        cmd += ["--hidden", "16", "--nt-model", args.nt_model]
    if path == "embed_nproc2":
        cmd += ["--nproc", "2"]
    return cmd


def run_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: fair on a small, busy CPU


def run_to_end(cmd: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env())
    return time.perf_counter() - start, done


def processes_of(folder: Path) -> list[psutil.Process]:
    marker, found = str(folder), []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def shards(folder: Path) -> int:
    return len(list(folder.glob("**/checkpoints/shard-*.npz")))


def kill_run(
    cmd: list[str], out: Path, *, at_s: float | None, protein_stage: bool, grace_s: float, timeout: float
) -> dict:
    """Start `cmd`, SIGKILL its process group at `at_s` s (or once a protein shard exists); what was left."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=run_env()
    )
    protein = out / "protein" / "checkpoints"
    while proc.poll() is None and time.perf_counter() - start < timeout:
        if protein_stage and any(protein.glob("shard-*.npz")):  # then `at_s` more seconds into the stage
            at_s, protein_stage = time.perf_counter() - start + at_s, False
        if not protein_stage and time.perf_counter() - start >= at_s:
            break
        time.sleep(0.005)
    killed = proc.poll() is None
    kill_s = time.perf_counter() - start
    if killed:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            killed = False
    proc.wait()
    state = {
        "killed": killed,
        "kill_s": kill_s,
        "shards_at_kill": shards(out),
        "protein_shards_at_kill": len(list(protein.glob("shard-*.npz"))),
        "temp_files_at_kill": len(list(out.glob("**/*.tmp"))),
    }
    end = time.monotonic() + grace_s
    while processes_of(out) and time.monotonic() < end:
        time.sleep(0.1)
    left = processes_of(out)
    state["orphans"] = len(left)
    state["orphan_cmdlines"] = [" ".join(p.cmdline())[:200] for p in left if p.is_running()]
    for p in left:  # never let one write beside the resume
        try:
            p.kill()
        except psutil.Error:
            pass
    return state


def same_output(path: str, out: Path, ref: Path) -> dict:
    if path == "predict":
        from perfkit.workload.predictions import FRAME_CSV, READ_CSV

        equal = all(
            (out / name).exists() and (out / name).read_bytes() == (ref / name).read_bytes()
            for name in (FRAME_CSV, READ_CSV)
        )
        return {"identical": equal}
    from perfkit.workload.store import read_embeddings

    ids, vectors = read_embeddings(out / "embeddings.h5")
    ref_ids, ref_vectors = read_embeddings(ref / "embeddings.h5")
    same_ids = ids == ref_ids
    diff = (
        float(np.abs(vectors - ref_vectors).max())
        if same_ids and vectors.shape == ref_vectors.shape
        else None
    )
    return {
        "identical": bool(same_ids and np.array_equal(vectors, ref_vectors)),
        "ids_equal": same_ids,
        "max_abs_diff": diff,
    }


def chaos(args) -> dict:
    from perfkit.workload.synth import write_synthetic_fasta

    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="perfkit-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "sample.fa"
    write_synthetic_fasta(fasta, args.reads, profile=args.profile, seed=args.seed)
    paths = [p for p in args.paths.split(",") if p]
    refs = {}
    for path in paths:
        ref = work / f"ref-{path}"
        wall, done = run_to_end(command(path, fasta, ref, args), args.timeout)
        if done.returncode != 0:
            raise SystemExit(
                f"error: the reference {path} run failed (exit {done.returncode}): {done.stderr[-2000:]}"
            )
        refs[path] = {"dir": ref, "wall_s": wall}
    trials = []
    predict_trials = 0
    for number in range(args.trials):
        path = paths[number % len(paths)]
        out = work / f"trial-{number:03d}-{path}"
        cmd = command(path, fasta, out, args)
        # every other predict trial, the first too
        protein_stage = path == "predict" and predict_trials % 2 == 0
        predict_trials += path == "predict"
        at_s = rng.uniform(0.0, 1.0) if protein_stage else rng.uniform(0.05, 0.95) * refs[path]["wall_s"]
        state = kill_run(
            cmd, out, at_s=at_s, protein_stage=protein_stage, grace_s=args.grace, timeout=args.timeout
        )
        resume_s, done = run_to_end(cmd + ["--resume"], args.timeout)
        trial = {
            "trial": number,
            "path": path,
            "kill": f"protein stage, {at_s:.2f} s after its first shard" if protein_stage else "random time",
            **state,
            "resume_exit": done.returncode,
            "resume_s": resume_s,
            "time_lost_s": state["kill_s"] + resume_s - refs[path]["wall_s"],
        }
        if done.returncode == 0:
            trial.update(same_output(path, out, refs[path]["dir"]))
        else:
            trial.update({"identical": False, "resume_stderr": done.stderr[-1500:]})
        trials.append(trial)
        print(
            json.dumps(
                {
                    k: trial[k]
                    for k in (
                        "trial",
                        "path",
                        "killed",
                        "kill_s",
                        "shards_at_kill",
                        "orphans",
                        "resume_exit",
                        "identical",
                        "time_lost_s",
                    )
                }
            ),
            file=sys.stderr,
            flush=True,
        )
    return {
        "benchmark": "chaos",
        "command": " ".join(["python -m perfkit.benchmarks.chaos", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "reference_wall_s": {p: r["wall_s"] for p, r in refs.items()},
        "summary": {
            "all": summarize(trials),
            **{p: summarize([t for t in trials if t["path"] == p]) for p in paths},
        },
        "trials": trials,
        "definitions": __doc__.split("Definitions:")[1].split("Prints")[0].strip(),
    }


def summarize(trials: list[dict]) -> dict:
    lost = [t["time_lost_s"] for t in trials]
    return {
        "trials": len(trials),
        "killed_while_running": sum(t["killed"] for t in trials),
        "identical": sum(bool(t["identical"]) for t in trials),
        "orphans": sum(t["orphans"] for t in trials),
        "protein_stage_kills": sum(t["kill"].startswith("protein") and t["killed"] for t in trials),
        "kills_with_part_written_protein_shards": sum(
            t["protein_shards_at_kill"] > 0 and t["killed"] for t in trials
        ),
        "time_lost_s": {
            "total": sum(lost),
            "mean": sum(lost) / len(lost) if lost else None,
            "max": max(lost) if lost else None,
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="kill embed / predict / embed --nproc 2 at random times, resume, "
        "compare with an uninterrupted run"
    )
    parser.add_argument("--trials", type=int, default=21, help="kills in all, taken in turn over --paths")
    parser.add_argument("--seed", type=int, default=0, help="kill times and the synthetic sample")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--reads", type=int, default=300, help="reads in the synthetic sample")
    parser.add_argument("--profile", default="reads150")
    parser.add_argument("--model", default="esm2_t6_8M")
    parser.add_argument(
        "--nt-model",
        default="dnabert_s",
        help="the predict path's nucleotide model (dnabert_mini: "
        "the same code path, seconds instead of minutes on a CPU)",
    )
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--token-budget", type=int, default=512, help="small: many batches, so many shards")
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--block-reads", type=int, default=16)
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds a killed run's processes get to die"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any one run may take")
    parser.add_argument("--work", help="folder for the sample and the runs (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, help="write the JSON result here too")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = chaos(args)
    result["wall_s"] = time.perf_counter() - start
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
