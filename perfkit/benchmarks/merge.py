"""Scoring from the stages' shards (merge -> classifier -> consensus), the previous path vs the current one.

Synthetic shards of both stages (768- and 2560-wide float32, ~10k frames per shard, rows in a packing-like
order within a shard), then `predict.score_reads` over every key and over the first half of the keys (what
rank 0 of 2 does), against a frozen copy of the previous implementation (np.load through zipfile, every
shard's keys indexed by every rank, features concatenated on the host, pandas consensus and to_csv). Both
read the same files; a warm-up pass of each puts them in the page cache, then repeats alternate. Prints
JSON: per-step seconds (medians; consensus_thread_s = the current path's writer thread, overlapped with
the other steps), the speed-ups, full/half (how the rank-local part scales with ranks) and whether both
paths wrote the same predictions. On CPU the current path's classifier step also puts the two blocks
side by side (a device op on CUDA): compare merge + classifier there.
Run: python -m perfkit.benchmarks.merge [--frames 200000] [--device cuda]
"""

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from perfkit.workload import classifier as clf
from perfkit.workload import predictions
from perfkit.workload import esm2, predict, shard_file
from perfkit.workload.config import make_config
from perfkit.workload.translate import FRAMES

PROTEIN_MODEL = "esm2_t36_3B"  # 2560 wide
STEPS = ("merge_s", "classify_s", "consensus_s", "total_s")


def write_shards(folder: Path, frames: int, per_shard: int, seed: int = 0) -> np.ndarray:
    """Both stages' shards of `frames` frames (about 5 of 6 frames per read survive translation); returns the keys."""
    rng = np.random.default_rng(seed)
    reads = -(-frames * 6 // 5) // 6 + 1
    keys = np.flatnonzero(rng.random(reads * 6) < 5 / 6)[:frames].astype(np.int64)
    ids = np.array([f"read_{k // 6}_{FRAMES[k % 6]}" for k in keys.tolist()])
    for stage, dim in (("nucleotide", clf.NT_DIM), ("protein", esm2.get_config(PROTEIN_MODEL).embed_dim)):
        checkpoints = Path(folder) / stage / "checkpoints"
        checkpoints.mkdir(parents=True)
        # rows drawn from it: quick to make
        pool = rng.standard_normal((per_shard * 2, dim), dtype=np.float32)
        for number, start in enumerate(range(0, len(keys), per_shard)):
            part = slice(start, start + per_shard)
            order = rng.permutation(len(keys[part]))  # packing reorders frames within a shard
            vectors = pool[rng.integers(0, len(pool), len(order))]
            with open(checkpoints / shard_file.shard_name(0, number, keys[part]), "wb") as f:
                np.savez(f, keys=keys[part][order], ids=ids[part][order], embeddings=vectors)
    return keys


# ------------------------------------------------------------------ the previous path, frozen for comparison


class OldIndex:
    def __init__(self, out_dir):
        self.paths = sorted((Path(out_dir) / "checkpoints").glob("shard-*.npz"))
        parts = []
        for p in self.paths:
            with np.load(p, allow_pickle=False) as data:
                parts.append(data["keys"])
        all_keys = np.concatenate(parts)
        shard = np.repeat(np.arange(len(parts)), [len(k) for k in parts])
        row = np.concatenate([np.arange(len(k)) for k in parts])
        self.keys, first = np.unique(all_keys, return_index=True)
        self.shard, self.row = shard[first], row[first]

    def between(self, lo, hi):
        return slice(int(np.searchsorted(self.keys, lo)), int(np.searchsorted(self.keys, hi)))

    def take(self, keys, field, read):
        at = np.searchsorted(self.keys, keys)
        out = None
        for number in np.unique(self.shard[at]):
            pick = np.flatnonzero(self.shard[at] == number)
            values = read(self.paths[number])[field]
            if out is None:
                out = (
                    np.empty((len(keys), values.shape[1]), dtype=np.float32)
                    if field == 2
                    else np.empty(len(keys), dtype=object)
                )
            out[pick] = values[self.row[at[pick]]]
        return out


def old_read_shard(path):
    with np.load(path, allow_pickle=False) as data:
        return data["keys"], data["ids"], data["embeddings"]


def old_score_reads(cfg, lo, hi, *, rank=0, hidden=512):
    out = Path(cfg.out_dir)
    t = time.perf_counter()
    nt, protein = OldIndex(out / "nucleotide"), OldIndex(out / "protein")
    keys = protein.keys[protein.between(lo, hi)]
    assert np.array_equal(keys, nt.keys[nt.between(lo, hi)])
    read = functools.lru_cache(maxsize=16)(old_read_shard)
    read_nt = functools.lru_cache(maxsize=16)(old_read_shard)
    protein_dim = esm2.get_config(cfg.model).embed_dim
    model, _ = clf.load_classifier(None, hidden=hidden, in_dim=clf.NT_DIM + protein_dim, seed=cfg.seed)
    merge_s, classify_s = time.perf_counter() - t, 0.0
    ids = np.empty(len(keys), dtype=object)
    probs = np.empty((len(keys), 2), dtype=np.float32)
    for start in range(0, len(keys), 65_536):
        chunk = keys[start : start + 65_536]
        t = time.perf_counter()
        ids[start : start + len(chunk)] = protein.take(chunk, 1, read)
        features = clf.merge_features(
            nt.take(chunk, 2, read_nt), protein.take(chunk, 2, read), protein_dim=protein_dim
        )
        merge_s += time.perf_counter() - t
        t = time.perf_counter()
        probs[start : start + len(chunk)] = clf.predict_frames(model, features, device=cfg.device)
        classify_s += time.perf_counter() - t
    t = time.perf_counter()
    frame_ids = [str(i) for i in ids]
    reads = clf.consensus(frame_ids, probs)
    folder = out / "old_parts" / f"r{rank:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    frames = clf.split_frame_ids(frame_ids)
    frames["p_other"], frames["p_virus"] = probs[:, 0], probs[:, 1]
    frames.to_csv(folder / predictions.FRAME_CSV, index=False)
    reads.to_csv(folder / predictions.READ_CSV, index=False)
    return {
        "merge_s": merge_s,
        "classify_s": classify_s,
        "consensus_s": time.perf_counter() - t,
        "frames": len(keys),
    }


# ------------------------------------------------------------------------------------------------------


def same_output(folder: Path) -> bool:
    new, old = folder / "parts" / "r000", folder / "old_parts" / "r000"
    for name in (predictions.FRAME_CSV, predictions.READ_CSV):
        a, b = (
            pd.read_csv(old / name, dtype={"frame_id": str, "read_id": str}),
            pd.read_csv(new / name, dtype={"frame_id": str, "read_id": str}),
        )
        if a.columns.tolist() != b.columns.tolist() or a.iloc[:, 0].tolist() != b.iloc[:, 0].tolist():
            return False
        for column in a.columns[1:]:
            if a[column].dtype.kind == "f" and not np.allclose(
                a[column], b[column], atol=1e-6, equal_nan=True
            ):
                return False
            if a[column].dtype.kind != "f" and a[column].tolist() != b[column].tolist():
                return False
    return True


def _rank_worker(job):
    cfg, lo, hi, rank, hidden, threads, by_read = job
    predict.MERGE_THREADS, shard_file.COPY_BY_READ = threads, by_read
    return predict.score_reads(cfg, lo, hi, rank=rank, hidden=hidden)


def concurrent_ranks(cfg, keys, ranks: int, hidden: int, threads: int, repeats: int) -> dict:
    """score_reads of `ranks` contiguous shares of the reads at the same time, one process (and GPU) each."""
    import multiprocessing

    cuts = [0] + [int(keys[len(keys) * r // ranks] // 6 * 6) for r in range(1, ranks)] + [2**62]
    gpus = torch.cuda.device_count() if cfg.device.startswith("cuda") else 0
    jobs = [
        (
            cfg.model_copy(update={"device": f"cuda:{r % gpus}" if gpus else cfg.device}),
            cuts[r],
            cuts[r + 1],
            r,
            hidden,
            threads,
            shard_file.COPY_BY_READ,
        )
        for r in range(ranks)
    ]
    runs = []
    with multiprocessing.get_context("spawn").Pool(ranks) as pool:
        pool.map(_rank_worker, jobs)  # warm-up: imports, allocators
        for _ in range(repeats):
            runs.append(pool.map(_rank_worker, jobs))
    slowest = [max(r["merge_s"] + r["classify_s"] + r["consensus_s"] for r in run) for run in runs]
    middle = runs[int(np.argsort(slowest)[len(slowest) // 2])]
    return {
        "ranks": ranks,
        "slowest_total_s": statistics.median(slowest),
        "per_rank": [
            {
                k: r[k]
                for k in ("device", "frames", "merge_s", "classify_s", "consensus_s", "consensus_thread_s")
            }
            for r in middle
        ],
    }


def main():
    parser = argparse.ArgumentParser(description="scoring from shards: previous vs current path")
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None, help="where to write the shards (default: a temp folder)")
    parser.add_argument(
        "--threads",
        type=int,
        default=predict.MERGE_THREADS,
        help="predict.MERGE_THREADS (default: its own choice)",
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=0,
        help="also score that many shares at the same time, one process (and GPU) each",
    )
    parser.add_argument("--ranks-threads", default="", help="e.g. 4,8: MERGE_THREADS of the concurrent ranks")
    parser.add_argument(
        "--sweep-threads", default="", help="e.g. 4,8,16: also time the current path with each"
    )
    parser.add_argument(
        "--new-only", action="store_true", help="skip the previous path (no speed-up, no check)"
    )
    parser.add_argument("--copy-by", choices=("read", "map"), default="read", help="shard_file.COPY_BY_READ")
    args = parser.parse_args()
    predict.MERGE_THREADS, shard_file.COPY_BY_READ = args.threads, args.copy_by == "read"
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        keys = write_shards(folder, args.frames, args.per_shard)
        write_s = time.perf_counter() - start
        cfg = make_config(input=folder / "unused.fa", out_dir=folder, model=PROTEIN_MODEL, device=args.device)
        half = int(keys[len(keys) // 2] // 6 * 6)  # rank 0 of 2: the first half of the reads
        runs = {
            "old_all": lambda: old_score_reads(cfg, 0, 2**62, hidden=args.hidden),
            "new_all": lambda: predict.score_reads(cfg, 0, 2**62, hidden=args.hidden),
            "old_half": lambda: old_score_reads(cfg, 0, half, rank=1, hidden=args.hidden),
            "new_half": lambda: predict.score_reads(cfg, 0, half, rank=1, hidden=args.hidden),
        }
        if args.new_only:
            runs = {name: run for name, run in runs.items() if name.startswith("new")}
        for run in runs.values():  # warm-up: page cache, allocator, threads
            run()
        same = None if args.new_only else same_output(folder)
        times, threads = {name: [] for name in runs}, None
        for _ in range(args.repeats):
            for name, run in runs.items():
                r = run()
                times[name].append(
                    {k: r.get(k, 0.0) for k in ("merge_s", "classify_s", "consensus_s", "consensus_thread_s")}
                )
                threads = r.get("merge_threads", threads)  # the current path's, as it chose them
        medians = {
            name: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for name, rows in times.items()
        }
        for m in medians.values():  # the writer thread's time overlaps the others: not in the total
            m["total_s"] = m["merge_s"] + m["classify_s"] + m["consensus_s"]
        result = {
            "frames": len(keys),
            "per_shard": args.per_shard,
            "dims": [clf.NT_DIM, esm2.get_config(PROTEIN_MODEL).embed_dim],
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "hidden": args.hidden,
            "repeats": args.repeats,
            "merge_threads": threads,
            "copy_by": args.copy_by,
            "shard_write_s": write_s,
            "seconds": medians,
            "same_output": same,
            "speedup": None
            if args.new_only
            else {k: medians["old_all"][k] / medians["new_all"][k] for k in STEPS},
            "full_over_half": {
                p: {k: medians[f"{p}_all"][k] / medians[f"{p}_half"][k] for k in STEPS}
                for p in ("old", "new")
                if f"{p}_all" in medians
            },
        }
        if args.sweep_threads:
            sweep = {}
            for threads in [int(x) for x in args.sweep_threads.split(",")]:
                predict.MERGE_THREADS = threads
                sweep[threads] = statistics.median(
                    predict.score_reads(cfg, 0, 2**62, hidden=args.hidden)["merge_s"]
                    for _ in range(args.repeats)
                )
            predict.MERGE_THREADS = args.threads
            result["merge_s_by_threads"] = sweep
        if args.ranks:
            result["concurrent"] = {}
            for threads in (
                [int(x) for x in args.ranks_threads.split(",")] if args.ranks_threads else [args.threads]
            ):
                run = concurrent_ranks(cfg, keys, args.ranks, args.hidden, threads, args.repeats)
                run["scaling_vs_one_process"] = medians["new_all"]["total_s"] / run["slowest_total_s"]
                result["concurrent"][f"threads_{threads}"] = run
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
