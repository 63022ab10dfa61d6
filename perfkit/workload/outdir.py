"""The run's --out folder: the input's identity, the checks before a run writes anything (results already
there, a resume that changes results or reads another input), and the folder's preparation."""

from __future__ import annotations

import hashlib
import json
import logging
import os

from perfkit.errors import UserError
from perfkit.summary import write_json
from perfkit.workload.config import EmbedConfig
from perfkit.workload.data import FRAMELESS_FILE
from perfkit.workload.lock import check_is_folder

log = logging.getLogger(__name__)


def check_fasta_start(path) -> None:
    """Read the first record now: an unreadable or malformed file fails before any work starts."""
    from perfkit.workload.fasta import read_fasta

    records = read_fasta(path)
    try:
        next(records)
    except StopIteration:
        raise UserError(
            f"{path}: no FASTA records", "pass a FASTA file with at least one '>id' record"
        ) from None
    finally:
        records.close()


HASH_CHUNK = 8 << 20  # streamed: memory stays flat whatever the input's size


def input_identity(path) -> dict:
    """The input's size and the sha256 of its whole content, streamed: what a resume must match
    (run_config.json's "input"). ~0.5 s per GB: seconds even for a 100M-read sample, against hours of
    embedding, and no edit anywhere in the file goes unnoticed."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return {
        "path": os.path.abspath(path),
        "size": size,
        "sha256": digest.hexdigest(),
        "fingerprint": "sha256 of the size and the whole file",
    }


def check_out_dir(cfg: EmbedConfig) -> dict | None:
    """Refuse (writing nothing) an --out folder with results unless resuming, or a resume that changes results
    or reads another input; returns the input's identity when it had to hash it (a resume), else None."""
    out = cfg.out_dir
    config_path = out / "run_config.json"
    earlier = (out / "checkpoints").exists() and any((out / "checkpoints").glob("shard-*"))
    if not cfg.resume:
        if earlier or (out / "embeddings.h5").exists():
            raise UserError(
                f"{out} already holds results of a run",
                "pass --resume to continue it, or choose an empty --out folder",
            )
    elif config_path.exists():
        recorded = json.loads(config_path.read_text())
        before = recorded.get("result_fields")
        if before is not None and before != cfg.result_fields():
            changed = sorted(k for k in before if before[k] != cfg.result_fields().get(k))
            raise UserError(
                f"--resume with settings that change results ({', '.join(changed)}) differ from the run in {out}",
                "resume with the same settings or use a new --out folder",
            )
        return check_same_input(cfg, recorded.get("input"))
    return None


def check_same_input(cfg: EmbedConfig, before: dict | None) -> dict | None:
    """A resume must read the input its checkpoints came from: shards hold keys (read index x 6 + frame),
    so another input (or the same reads renamed) would mix old and new sequences under one key."""
    if before is None:  # run_config.json of an earlier version: nothing to compare with
        log.warning(
            "%s records no input fingerprint: cannot check that --resume reads the same input", cfg.out_dir
        )
        return None
    if not cfg.input.exists():
        raise UserError(f"input {cfg.input} does not exist", "pass the path of a FASTA file")
    now = input_identity(cfg.input)
    if (now["size"], now["sha256"]) != (before.get("size"), before.get("sha256")):
        raise UserError(
            f"--resume with another input: {cfg.input} ({now['size']:,} bytes) is not the input of the "
            f"run in {cfg.out_dir} ({before.get('path')}, {before.get('size', 0):,} bytes, different content)",
            "resume with that run's input file, or drop --resume and choose a new --out folder",
        )
    return now


def prepare_out_dir(cfg: EmbedConfig) -> None:
    out = cfg.out_dir
    check_is_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"output folder {out} is not writable ({err.strerror})", "choose a writable --out folder"
        ) from None
    config_path = out / "run_config.json"
    identity = check_out_dir(cfg)  # a resume hashed the input already: the whole file is read once, not twice
    if not cfg.resume:
        for name in ("embeddings.h5", "summary.json", "telemetry.jsonl"):
            (out / name).unlink(missing_ok=True)
        for stale in out.glob("telemetry.rank*.jsonl"):  # an earlier multi-process run's
            stale.unlink()
    for stale in out.glob(FRAMELESS_FILE.format(rank="*")):  # every rank rewrites its own (a resume re-reads
        stale.unlink()  # every block), maybe with another rank count
    if cfg.resume:
        (out / "embeddings.h5").unlink(missing_ok=True)  # rebuilt from the shards at the end
    write_json(
        config_path,
        {
            "config": cfg.model_dump(mode="json"),
            "result_fields": cfg.result_fields(),
            "input": identity or input_identity(cfg.input),
        },
    )
