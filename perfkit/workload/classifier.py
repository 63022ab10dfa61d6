"""Seed pipeline stages 7-9: merge embeddings, classify frames, per-read consensus.

Conventions:
- features per frame = DNABERT-S (768) then ESM-2 (2560), concatenated in that order
  (3328); the classifier's weights depend on that order. Rows are aligned by frame
  id `{read}_{F1..R3}`; `align_by_ids` checks it (the original system misaligned ids).
- class index 0 = other, 1 = virus: probabilities are [n, 2] = (p_other, p_virus).
- consensus (seed rule): a read is 'virus' if the max p_virus over its frames >= the
  max p_other over its frames, so a tie is 'virus'. The read id is the frame id
  without its `_F1`..`_R3` suffix; for chunked reads that is the chunk id
  (`{read}_chunk_{k}`), so each chunk gets its own call, as in the seed system.
- reads with no surviving frame are absent from the consensus table unless the full
  list of read (or chunk) ids is given; then they appear with prediction 'no_frames'.
- the classifier info records hidden size and a sha256 of the weights: compare it
  between baseline and candidate (a 300 vs 500 hidden mix-up once looked like 93 %
  agreement).
- the chain's path (`launch_parts`, `frame_table`, `consensus_by_key`, predictions.PredictionWriter) never
  builds the [n, 3328] block on the host: each stage's vectors are gathered into their own
  block and put side by side batch by batch on the device; reads are grouped by key
  (read index = key // 6), their ids only checked and written; CSVs are written by pyarrow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from perfkit.errors import CheckFailed, UserError
from perfkit.workload.translate import FRAMES

NT_DIM = 768  # DNABERT-S
PROTEIN_DIM = 2560  # ESM-2 3B
FEATURE_DIM = NT_DIM + PROTEIN_DIM
CLASSES = ("other", "virus")  # class index 0, 1
NO_FRAMES = "no_frames"
FRAMES_PER_READ = len(FRAMES)  # key = read index x 6 + frame index


# --- stage 7: merge ----------------------------------------------------------


def align_by_ids(ids_a, vec_a, ids_b, vec_b) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Check that two (ids, vectors) sets describe the same frames in the same order.

    Returns (ids, vec_a, vec_b) unchanged; raises UserError naming the first mismatch.
    Nothing is reordered: a difference in order is a bug upstream, not something to hide.
    """
    ids_a, ids_b = [str(i) for i in ids_a], [str(i) for i in ids_b]
    for name, ids, vec in (("a", ids_a, vec_a), ("b", ids_b, vec_b)):
        if len(ids) != len(vec):
            raise UserError(
                f"set {name} has {len(ids)} ids but {len(vec)} vectors",
                "ids and vectors must come from the same file",
            )
        if len(set(ids)) != len(ids):
            duplicate = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
            raise UserError(f"set {name} holds id {duplicate!r} more than once", "rebuild its embeddings")
    if ids_a != ids_b:
        row = next((i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b), min(len(ids_a), len(ids_b)))
        first_a = ids_a[row] if row < len(ids_a) else "<end>"
        first_b = ids_b[row] if row < len(ids_b) else "<end>"
        only_a, only_b = len(set(ids_a) - set(ids_b)), len(set(ids_b) - set(ids_a))
        raise UserError(
            f"ids differ first at row {row}: {first_a!r} vs {first_b!r} "
            f"({only_a} ids only in a, {only_b} only in b)",
            "embed both models from the same translated frames, in the same order",
        )
    return ids_a, vec_a, vec_b


def merge_features(
    nt: np.ndarray, protein: np.ndarray, *, protein_dim: int = PROTEIN_DIM, nt_dim: int = NT_DIM
) -> np.ndarray:
    """[n, 768] DNABERT-S + [n, 2560] ESM-2 3B -> [n, 3328] float32 (rows already aligned).

    `protein_dim` and `nt_dim` are the models' widths (2560 for ESM-2 3B, 768 for DNABERT-S; smaller models
    for smoke runs and tests).
    """
    for name, array, dim in (("nucleotide", nt, nt_dim), ("protein", protein, protein_dim)):
        if np.ndim(array) != 2 or np.shape(array)[1] != dim:
            raise UserError(
                f"{name} embeddings have shape {np.shape(array)}, expected [n, {dim}]",
                "check which model produced the file",
            )
    if len(nt) != len(protein):
        raise UserError(
            f"{len(nt)} nucleotide rows but {len(protein)} protein rows",
            "both must hold the same frames; check them with align_by_ids",
        )
    return np.concatenate((nt, protein), axis=1).astype(np.float32, copy=False)


# --- stage 8: classifier -----------------------------------------------------


class ViralClassifier(nn.Module):
    """Linear(in, h) -> BatchNorm1d -> ReLU -> Dropout -> Linear(h, 2); logits (0 = other, 1 = virus)."""

    def __init__(self, in_dim: int = FEATURE_DIM, *, hidden: int, dropout: float = 0.5):
        # hidden has no default on purpose: baseline and candidate must state theirs
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.bn1(self.fc1(x)))))


def weights_sha256(state_dict: dict) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor (file format independent)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_classifier(
    path: str | Path | None = None,
    *,
    hidden: int,
    in_dim: int = FEATURE_DIM,
    dropout: float = 0.5,
    seed: int = 0,
) -> tuple[ViralClassifier, dict]:
    """(model in eval mode, info). Weights from a state_dict `.pt` file, or random from `seed`."""
    if path is None:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
            torch.manual_seed(seed)
            model = ViralClassifier(in_dim, hidden=hidden, dropout=dropout)
        source = f"random(seed={seed})"
    else:
        model = ViralClassifier(in_dim, hidden=hidden, dropout=dropout)
        model.load_state_dict(_read_state_dict(Path(path), model))
        source = str(path)
    model.eval()
    info = {
        "source": source,
        "in_dim": in_dim,
        "hidden": hidden,
        "dropout": dropout,
        "classes": list(CLASSES),
        "weights_sha256": weights_sha256(model.state_dict()),
    }
    return model, info


def _read_state_dict(path: Path, model: ViralClassifier) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise UserError(f"classifier weights {path} not found", "check the path") from err
    except Exception as err:  # a pickled model object, a truncated file, not torch at all
        raise UserError(
            f"cannot read classifier weights {path}: {err}",
            "save them with torch.save(model.state_dict(), path)",
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{path} does not hold a state_dict", "save it with torch.save(model.state_dict(), path)"
        )
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"classifier weights {path} have other layers: missing {missing}, unexpected {unexpected}",
            "expected fc1, bn1, fc2 of ViralClassifier",
        )
    wrong = [name for name in expected if tuple(state[name].shape) != tuple(expected[name].shape)]
    if wrong:
        name = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        found_hidden, found_in = state["fc1.weight"].shape
        raise UserError(
            f"classifier weights {path} do not fit in_dim={model.in_dim}, hidden={model.hidden}: "
            f"layer {name} expected {tuple(expected[name].shape)}, "
            f"found {tuple(state[name].shape)}{more}",
            f"these weights are in_dim={found_in}, hidden={found_hidden}; pass those",
        )
    return state


def predict_frames(
    model: nn.Module, features: np.ndarray, batch_size: int = 4096, device: str = "cpu"
) -> np.ndarray:
    """Softmax probabilities [n, 2] float32 (p_other, p_virus), model in eval mode."""
    features = np.asarray(features, dtype=np.float32)
    in_dim = getattr(model, "in_dim", None)
    if features.ndim != 2 or (in_dim is not None and features.shape[1] != in_dim):
        raise UserError(
            f"features have shape {features.shape}, the classifier expects [n, {in_dim}]",
            "merge nucleotide and protein embeddings first",
        )
    model.eval().to(device)  # BatchNorm on running stats, dropout off
    out = np.empty((len(features), len(CLASSES)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(features[start : start + batch_size])).to(device)
            out[start : start + len(batch)] = torch.softmax(model(batch).float(), dim=1).cpu().numpy()
    return out


def host_block(rows: int, dim: int, device: str) -> torch.Tensor:
    """A float32 host block for `launch_parts`: pinned when the classifier runs on CUDA (asynchronous copies)."""
    return torch.empty((rows, dim), dtype=torch.float32, pin_memory=str(device).startswith("cuda"))


def launch_parts(model: nn.Module, parts, *, device: str = "cpu", batch_size: int = 4096):
    """Start classifying frames whose features are the parts side by side: part (block, where) gives frame
    i's columns as block[where[i]] (blocks filled in storage order, see store.ShardIndex.fill). The
    columns meet batch by batch on the device, so the host never builds the merged block; on CUDA the
    (pinned) blocks go over asynchronously and the caller may fill other blocks meanwhile.
    Returns a function that waits and gives the softmax probabilities [n, 2] float32 in frame order."""
    blocks = [torch.as_tensor(block) for block, _ in parts]
    wheres = [np.asarray(where, dtype=np.int64) for _, where in parts]
    in_dim, n = sum(b.shape[1] for b in blocks), len(wheres[0])
    if getattr(model, "in_dim", in_dim) != in_dim or any(len(w) != n for w in wheres):
        raise UserError(
            f"features have {in_dim} columns for {[len(w) for w in wheres]} frames, the classifier "
            f"expects [n, {getattr(model, 'in_dim', None)}]",
            "merge nucleotide and protein embeddings first",
        )
    model.eval().to(device)  # BatchNorm on running stats, dropout off
    cuda = torch.device(device).type == "cuda"
    with torch.inference_mode():
        # a copy from pageable memory would wait for the stream (the blocks' copies): `where` goes pinned too
        on_device = [
            (
                b.to(device, non_blocking=True),
                (torch.from_numpy(w).pin_memory() if cuda else torch.from_numpy(w)).to(
                    device, non_blocking=True
                ),
            )
            for b, w in zip(blocks, wheres)
        ]
        probs = torch.empty((n, len(CLASSES)), dtype=torch.float32, device=device)
        for start in range(0, n, batch_size):
            x = torch.cat([b.index_select(0, w[start : start + batch_size]) for b, w in on_device], dim=1)
            probs[start : start + len(x)] = torch.softmax(model(x).float(), dim=1)
        if not cuda:
            return lambda: probs.numpy()
        host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(probs, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

    def result() -> np.ndarray:
        done.synchronize()
        return host.numpy()

    return result


def predict_parts(model: nn.Module, parts, *, device: str = "cpu", batch_size: int = 4096) -> np.ndarray:
    """`launch_parts`, waited for."""
    return launch_parts(model, parts, device=device, batch_size=batch_size)()


# --- stage 9: consensus --------------------------------------------------------


def split_frame_ids(frame_ids) -> pd.DataFrame:
    """Columns frame_id, read_id, frame; UserError naming the first id without an _F1.._R3 suffix."""
    ids = pd.Series(np.asarray(frame_ids, dtype=str), dtype=object, name="frame_id")
    frame, read_id = ids.str[-2:], ids.str[:-3]  # every frame suffix is "_" + 2 characters
    bad = ~frame.isin(FRAMES) | (ids.str[-3:-2] != "_") | (read_id == "")
    if bad.any():
        raise UserError(
            f"frame id {ids[bad].iloc[0]!r} does not end in _{'/_'.join(FRAMES)}",
            "use the ids of the translation step",
        )
    if ids.duplicated().any():
        raise UserError(
            f"frame id {ids[ids.duplicated()].iloc[0]!r} appears more than once",
            "each frame must be classified once",
        )
    return pd.DataFrame({"frame_id": ids, "read_id": read_id, "frame": frame})


def consensus(frame_ids, probs: np.ndarray, all_read_ids=None) -> pd.DataFrame:
    """Per read: read_id, frames (count), max_virus, max_other, prediction, in first-seen order.

    With all_read_ids (read or chunk ids, as translated), every read gets a row, in that
    order; reads without frames get frames=0, NaN scores and prediction 'no_frames'.
    """
    probs = check_probs(frame_ids, probs)
    frames = split_frame_ids(frame_ids)
    frames["p_other"], frames["p_virus"] = probs[:, 0], probs[:, 1]
    table = (
        frames.groupby("read_id", sort=False)
        .agg(frames=("frame", "size"), max_virus=("p_virus", "max"), max_other=("p_other", "max"))
        .reset_index()
    )
    table["prediction"] = np.where(table["max_virus"] >= table["max_other"], "virus", "other")
    if all_read_ids is None:
        return table
    every = pd.DataFrame({"read_id": np.asarray(all_read_ids, dtype=str)})
    if every["read_id"].duplicated().any():
        raise UserError(
            f"read id {every['read_id'][every['read_id'].duplicated()].iloc[0]!r} is listed twice",
            "pass each read (or chunk) id once",
        )
    unknown = ~table["read_id"].isin(every["read_id"])
    if unknown.any():
        raise UserError(
            f"frames of read {table['read_id'][unknown].iloc[0]!r} but that read is not listed",
            "for chunked reads pass the chunk ids",
        )
    table = every.merge(table, on="read_id", how="left")
    table["frames"] = table["frames"].fillna(0).astype(int)
    table["prediction"] = table["prediction"].fillna(NO_FRAMES)
    return table


def check_probs(frame_ids, probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(CLASSES) or len(probs) != len(frame_ids):
        raise UserError(
            f"probabilities have shape {probs.shape} for {len(frame_ids)} frame ids",
            "expected [n, 2] (p_other, p_virus), one row per frame id",
        )
    if not np.isfinite(probs).all():
        raise UserError("probabilities hold NaN or inf", "check the classifier's precision and inputs")
    return probs


FRAME_COLUMNS = ("frame_id", "read_id", "frame", "p_other", "p_virus")
READ_COLUMNS = ("read_id", "frames", "max_virus", "max_other", "prediction")


def frame_table(keys: np.ndarray, frame_ids, probs: np.ndarray) -> pa.Table:
    """The per-frame rows of frames in key order (the chain's path: ids from the shards, keys sorted),
    checked without parsing ids in Python: each id ends in "_" + its key's frame."""
    probs = check_probs(frame_ids, probs)
    keys = np.asarray(keys, dtype=np.int64)
    ids = pa.array(np.asarray(frame_ids) if len(frame_ids) else [], type=pa.string())
    if len(keys) != len(ids):
        raise CheckFailed(f"alignment check failed: {len(keys)} keys for {len(ids)} frame ids")
    suffix = pc.utf8_slice_codeunits(ids, -3)
    expected = pa.array(["_" + f for f in FRAMES]).take(pa.array(keys % FRAMES_PER_READ))
    read_id = pc.utf8_slice_codeunits(ids, 0, -3)
    bad = pc.or_(pc.not_equal(suffix, expected), pc.equal(pc.utf8_length(read_id), 0))
    if len(ids) and pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        raise CheckFailed(
            f"alignment check failed: frame id {ids[first].as_py()!r} does not end in its key's "
            f"frame _{FRAMES[keys[first] % FRAMES_PER_READ]}"
        )
    return pa.table(
        [ids, read_id, pc.utf8_slice_codeunits(ids, -2), pa.array(probs[:, 0]), pa.array(probs[:, 1])],
        names=list(FRAME_COLUMNS),
    )


def consensus_by_key(keys: np.ndarray, frames: pa.Table) -> pa.Table:
    """Consensus of frames in key order (a `frame_table`), grouped by read index = key // 6: the same rows,
    columns and order as `consensus` (first seen = key order) without grouping strings. A read's frames
    must carry one read id (checked, vectorised)."""
    keys = np.asarray(keys, dtype=np.int64)
    if not len(keys):
        return pa.table(
            {
                "read_id": pa.array([], pa.string()),
                "frames": pa.array([], pa.int64()),
                "max_virus": pa.array([], pa.float32()),
                "max_other": pa.array([], pa.float32()),
                "prediction": pa.array([], pa.string()),
            }
        )
    if np.any(keys[1:] <= keys[:-1]):
        raise RuntimeError("consensus needs frames in ascending key order, each once")
    reads = keys // FRAMES_PER_READ
    starts = np.flatnonzero(np.concatenate(([True], reads[1:] != reads[:-1])))
    counts = np.diff(np.append(starts, len(keys)))
    read_ids = frames.column("read_id")
    first_id = read_ids.take(pa.array(starts))
    if not pc.all(
        pc.equal(read_ids, first_id.take(pa.array(np.repeat(np.arange(len(starts)), counts))))
    ).as_py():
        raise CheckFailed(
            "alignment check failed: the frames of one read (key // 6) carry different read ids"
        )
    max_virus = np.maximum.reduceat(frames.column("p_virus").to_numpy(), starts)
    max_other = np.maximum.reduceat(frames.column("p_other").to_numpy(), starts)
    prediction = np.where(max_virus >= max_other, CLASSES[1], CLASSES[0])  # a tie is 'virus'
    return pa.table(
        [
            first_id,
            pa.array(counts, pa.int64()),
            pa.array(max_virus),
            pa.array(max_other),
            pa.array(prediction, pa.string()),
        ],
        names=list(READ_COLUMNS),
    )


def with_no_frame_rows(reads: pa.Table, read_index: np.ndarray, no_frame_index, no_frame_ids) -> pa.Table:
    """The consensus rows (of reads `read_index`, ascending) with a row for each read without a frame,
    all in read order: 0 frames, no scores, the call `no_frames`."""
    n = len(no_frame_ids)
    extra = pa.table(
        [
            pa.array(list(no_frame_ids), pa.string()),
            pa.array(np.zeros(n, np.int64)),
            pa.nulls(n, pa.float32()),
            pa.nulls(n, pa.float32()),
            pa.array([NO_FRAMES] * n, pa.string()),
        ],
        names=list(READ_COLUMNS),
    )
    order = np.argsort(np.concatenate([read_index, np.asarray(no_frame_index, np.int64)]), kind="stable")
    return pa.concat_tables([reads.cast(extra.schema), extra]).take(pa.array(order))
