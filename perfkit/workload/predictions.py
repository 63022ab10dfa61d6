"""The chain's outputs: per-frame and per-read prediction CSVs, written at once (`write_predictions`) or
part by part as the chain scores (`PredictionWriter`, CSVs by pyarrow), read back (`read_predictions`),
and two runs' calls compared (`prediction_agreement`, with the classifiers' info: a 300 vs 500 hidden
mix-up once looked like 93 % agreement)."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from perfkit.errors import UserError
from perfkit.workload.classifier import (
    CLASSES,
    FRAMES_PER_READ,
    NO_FRAMES,
    check_probs,
    consensus_by_key,
    frame_table,
    split_frame_ids,
    with_no_frame_rows,
)


FRAME_CSV = "predictions_per_frame.csv"


READ_CSV = "predictions_per_read.csv"


def write_predictions(out_dir: str | Path, frame_ids, probs: np.ndarray, read_table: pd.DataFrame) -> dict:
    """predictions_per_frame.csv (frame_id, read_id, frame, p_other, p_virus) and
    predictions_per_read.csv (the consensus table), each temp file then rename."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create {out_dir}: {err.strerror}", "choose a writable output folder"
        ) from err
    probs = check_probs(frame_ids, probs)
    frames = split_frame_ids(frame_ids)
    frames["p_other"], frames["p_virus"] = probs[:, 0], probs[:, 1]
    paths = {"frames": out_dir / FRAME_CSV, "reads": out_dir / READ_CSV}
    _write_csv(frames, paths["frames"])
    _write_csv(read_table, paths["reads"])
    return {
        "frames_csv": str(paths["frames"]),
        "reads_csv": str(paths["reads"]),
        "frames": len(frames),
        "reads": len(read_table),
    }


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(csv_bytes(pa.Table.from_pandas(table, preserve_index=False), header=True))
    os.replace(tmp, path)


def csv_bytes(table: pa.Table, *, header: bool) -> pa.Buffer:
    """CSV text of a table by pyarrow (several times faster than pandas): text unquoted like pandas writes it
    unless some value needs quotes (then every text value is quoted); floats in shortest round-trip form,
    nulls empty. The values read back the same as pandas' file."""
    text = [c for c, t in zip(table.columns, table.schema.types) if pa.types.is_string(t)]
    special = any(pc.any(pc.match_substring_regex(c, '[",\r\n]')).as_py() for c in text if len(c))
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(
        table,
        sink,
        pa_csv.WriteOptions(
            include_header=header, quoting_header="none", quoting_style="needed" if special else "none"
        ),
    )
    return sink.getvalue()


class PredictionWriter:
    """The two prediction CSVs of frames given chunk by chunk in ascending key order (chunks never split a
    read): per chunk, `frame_table` + `consensus_by_key` + CSV text, done by one background thread in order
    (the caller meanwhile gathers and classifies the next chunk), appended to temp files that close()
    renames. Errors of the background work surface at the next add or at close."""

    def __init__(self, out_dir: str | Path, *, pending: int = 4):
        self.dir = Path(out_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"cannot create {self.dir}: {err.strerror}", "choose a writable output folder"
            ) from err
        self.paths = {"frames": self.dir / FRAME_CSV, "reads": self.dir / READ_CSV}
        self._tmp = {kind: path.with_name(path.name + ".tmp") for kind, path in self.paths.items()}
        self._files = {kind: open(tmp, "wb") for kind, tmp in self._tmp.items()}
        self.counts = {"frames": 0, "reads": 0, "virus_reads": 0, "no_frame_reads": 0}
        self.busy_s = 0.0  # the background thread's own time (overlapped with the caller's)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="perfkit-predictions")
        self._futures: deque = deque()
        self._pending = pending
        self._first = True

    def add(self, keys: np.ndarray, frame_ids, probs: np.ndarray, no_frame=None) -> None:
        """`no_frame`: (read indices, ids) of reads without a frame whose place is among this chunk's reads:
        written in read order as rows with 0 frames and the call `no_frames`."""
        first, self._first = self._first, False
        self._futures.append(self._pool.submit(self._write, keys, frame_ids, probs, first, no_frame))
        while len(self._futures) > self._pending:  # bounded memory: wait for the oldest chunk
            self._futures.popleft().result()

    def _write(self, keys, frame_ids, probs, header: bool, no_frame=None) -> None:
        start = time.perf_counter()
        frames = frame_table(keys, frame_ids, probs)
        reads = consensus_by_key(keys, frames)
        called = len(reads)
        if no_frame is not None and len(no_frame[0]):
            reads = with_no_frame_rows(
                reads, np.unique(np.asarray(keys, np.int64) // FRAMES_PER_READ), *no_frame
            )
        self._files["frames"].write(csv_bytes(frames, header=header))
        self._files["reads"].write(csv_bytes(reads, header=header))
        self.counts["frames"] += len(frames)
        self.counts["reads"] += called
        self.counts["no_frame_reads"] += len(reads) - called
        self.counts["virus_reads"] += int(
            pc.sum(pc.equal(reads.column("prediction"), CLASSES[1])).as_py() or 0
        )
        self.busy_s += time.perf_counter() - start

    def close(self) -> dict:
        """Wait for every chunk, then rename the temp files (an empty chunk list writes headers only)."""
        try:
            if self._first:
                self.add(
                    np.empty(0, np.int64), np.empty(0, dtype="U1"), np.empty((0, len(CLASSES)), np.float32)
                )
            while self._futures:
                self._futures.popleft().result()
        except BaseException:
            self.abort()
            raise
        self._pool.shutdown()
        for kind, f in self._files.items():
            f.close()
            os.replace(self._tmp[kind], self.paths[kind])
        return {"frames_csv": str(self.paths["frames"]), "reads_csv": str(self.paths["reads"]), **self.counts}

    def abort(self) -> None:
        """Stop and remove the temp files (nothing that looks complete is left)."""
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)
        for kind, f in self._files.items():
            f.close()
            self._tmp[kind].unlink(missing_ok=True)


def read_predictions(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frame table, read table) as written by write_predictions; ids stay strings."""
    out_dir = Path(out_dir)
    ids_as_text = {"frame_id": str, "read_id": str}
    return (
        pd.read_csv(out_dir / FRAME_CSV, dtype=ids_as_text),
        pd.read_csv(out_dir / READ_CSV, dtype=ids_as_text),
    )


def prediction_agreement(
    table_a: pd.DataFrame,
    table_b: pd.DataFrame,
    frames_a: pd.DataFrame | None = None,
    frames_b: pd.DataFrame | None = None,
    info_a: dict | None = None,
    info_b: dict | None = None,
) -> dict:
    """Share of reads with the same prediction in two runs, over the union of read ids
    (a read missing from one side counts as a disagreement). With frame tables, also the
    max |p_virus difference| over frames of both; with classifier infos, whether the
    weights are the same (agreement between different classifiers says little)."""
    a, b = _by_id(table_a, "read_id", "a"), _by_id(table_b, "read_id", "b")
    both = pd.concat(
        [a["prediction"].rename("prediction_a"), b["prediction"].rename("prediction_b")], axis=1, join="outer"
    )
    # a read without a frame on both sides was never classified: its matching 'no_frames' says nothing
    frameless = (both["prediction_a"] == NO_FRAMES) & (both["prediction_b"] == NO_FRAMES)
    both = both[~frameless]
    same = both["prediction_a"] == both["prediction_b"]  # NaN on one side -> False
    result = {
        "reads_a": len(a),
        "reads_b": len(b),
        "reads_union": len(both),
        "reads_without_frames_both": int(frameless.sum()),
        "only_in_a": int(both["prediction_b"].isna().sum()),
        "only_in_b": int(both["prediction_a"].isna().sum()),
        "same_prediction": int(same.sum()),
        "agreement": float(same.mean()) if len(both) else None,
        "virus_to_other": int(((both["prediction_a"] == "virus") & (both["prediction_b"] == "other")).sum()),
        "other_to_virus": int(((both["prediction_a"] == "other") & (both["prediction_b"] == "virus")).sum()),
    }
    if frames_a is not None and frames_b is not None:
        fa, fb = _by_id(frames_a, "frame_id", "a"), _by_id(frames_b, "frame_id", "b")
        delta = (fa["p_virus"] - fb["p_virus"]).abs().dropna()  # index-aligned on frame id
        result.update(
            {
                "frames_common": len(delta),
                "frames_only_in_a": int((~fa.index.isin(fb.index)).sum()),
                "frames_only_in_b": int((~fb.index.isin(fa.index)).sum()),
                "max_abs_delta_p_virus": float(delta.max()) if len(delta) else None,
                "max_abs_delta_frame": str(delta.idxmax()) if len(delta) else None,
            }
        )
        # near ties: reads whose call in run a is decided by less than the largest score change between
        # the runs (consensus margin = max p_virus - max p_other over the read's frames)
        margin = _read_margins(frames_a)
        if result["max_abs_delta_p_virus"] is not None:
            near = margin.abs() <= 2 * result["max_abs_delta_p_virus"]
            flipped = both.index[~same.to_numpy()]
            result.update(
                {
                    "near_tie_reads": int(near.sum()),
                    "flipped_near_ties": int(near.reindex(flipped).fillna(False).sum()),
                    "median_abs_read_margin": float(margin.abs().median()) if len(margin) else None,
                }
            )
    if info_a is not None and info_b is not None:
        result.update(
            {
                "hidden_a": info_a.get("hidden"),
                "hidden_b": info_b.get("hidden"),
                "same_classifier": info_a.get("weights_sha256") == info_b.get("weights_sha256"),
            }
        )
    return result


def _read_margins(frames: pd.DataFrame) -> pd.Series:
    """Per read: max p_virus - max p_other over its frames (>= 0 is a 'virus' call)."""
    read_ids = split_frame_ids(frames["frame_id"].astype(str))["read_id"].to_numpy()
    per = frames.assign(p_other=1.0 - frames["p_virus"].to_numpy()).groupby(read_ids)
    return per["p_virus"].max() - per["p_other"].max()


def _by_id(table: pd.DataFrame, column: str, side: str) -> pd.DataFrame:
    ids = table[column].astype(str)
    if ids.duplicated().any():
        raise UserError(
            f"table {side} lists {column} {ids[ids.duplicated()].iloc[0]!r} twice",
            "compare tables from write_predictions/consensus",
        )
    return table.set_index(ids)
