"""perfkit.workload.predictions: the prediction CSVs, written at once or part by part, read back and compared."""

import numpy as np
import pandas as pd
import pytest

from perfkit.errors import UserError
from perfkit.workload.classifier import consensus, load_classifier
from perfkit.workload.predictions import (
    PredictionWriter,
    prediction_agreement,
    read_predictions,
    write_predictions,
)
from test_classifier import FRAME_IDS, KEYS, PROBS


def test_csvs_written_with_columns_and_counts(tmp_path):
    table = consensus(FRAME_IDS, PROBS, all_read_ids=["r0", "r1", "r2", "r3", "r1_chunk_2"])
    written = write_predictions(tmp_path / "out", FRAME_IDS, PROBS, table)
    assert written["frames"] == 6 and written["reads"] == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "predictions_per_frame.csv",
        "predictions_per_read.csv",
    ]  # no temp files left
    frames, reads = read_predictions(tmp_path / "out")
    assert list(frames.columns) == ["frame_id", "read_id", "frame", "p_other", "p_virus"]
    assert list(frames["read_id"]) == ["r1", "r1", "r2", "r2", "r3", "r1_chunk_2"]
    assert list(frames["frame"]) == ["F1", "R2", "F2", "F3", "R1", "F1"]
    assert np.allclose(frames[["p_other", "p_virus"]].to_numpy(), PROBS)
    assert list(reads.columns) == ["read_id", "frames", "max_virus", "max_other", "prediction"]
    assert list(reads["prediction"]) == ["no_frames", "other", "virus", "virus", "other"]


def test_agreement_on_hand_made_tables():
    a = pd.DataFrame(
        {"read_id": ["r1", "r2", "r3", "r4"], "prediction": ["virus", "other", "virus", "other"]}
    )
    b = pd.DataFrame(
        {"read_id": ["r1", "r2", "r3", "r5"], "prediction": ["virus", "virus", "virus", "other"]}
    )
    result = prediction_agreement(a, b)
    # union r1..r5: r1, r3 agree; r2 differs; r4 only in a, r5 only in b
    assert result["reads_union"] == 5 and result["same_prediction"] == 2
    assert result["agreement"] == pytest.approx(0.4)
    assert result["only_in_a"] == 1 and result["only_in_b"] == 1
    assert result["other_to_virus"] == 1 and result["virus_to_other"] == 0
    assert prediction_agreement(a, a)["agreement"] == 1.0

    frames_a = pd.DataFrame({"frame_id": ["r1_F1", "r1_F2", "r2_R1"], "p_virus": [0.9, 0.2, 0.5]})
    frames_b = pd.DataFrame({"frame_id": ["r2_R1", "r1_F1", "r3_F1"], "p_virus": [0.45, 0.6, 0.1]})
    result = prediction_agreement(a, b, frames_a, frames_b)
    assert (
        result["frames_common"] == 2 and result["frames_only_in_a"] == 1 and result["frames_only_in_b"] == 1
    )
    assert result["max_abs_delta_p_virus"] == pytest.approx(0.3) and result["max_abs_delta_frame"] == "r1_F1"
    # read margins in a: r1 0.9 - 0.8 = 0.1, r2 0.5 - 0.5 = 0; both within 2 x 0.3; r2 is also a flip
    assert result["near_tie_reads"] == 2 and result["flipped_near_ties"] == 1
    assert result["median_abs_read_margin"] == pytest.approx(0.05)

    _, info_300 = load_classifier(hidden=8, seed=0)
    _, info_500 = load_classifier(hidden=12, seed=0)
    result = prediction_agreement(a, b, info_a=info_300, info_b=info_500)
    assert result["same_classifier"] is False and (result["hidden_a"], result["hidden_b"]) == (8, 12)
    with pytest.raises(UserError, match="'r1' twice"):
        prediction_agreement(pd.concat([a, a]), b)


def test_prediction_writer_in_chunks_equals_one_write(tmp_path):
    writer = PredictionWriter(tmp_path / "chunks")
    writer.add(KEYS[:4], FRAME_IDS[:4], PROBS[:4])  # chunks end between reads
    writer.add(KEYS[4:], np.array(FRAME_IDS[4:]), PROBS[4:])
    written = writer.close()
    assert (written["frames"], written["reads"], written["virus_reads"]) == (6, 4, 2)
    write_predictions(tmp_path / "once", FRAME_IDS, PROBS, consensus(FRAME_IDS, PROBS))
    (frames_a, reads_a), (frames_b, reads_b) = (
        read_predictions(tmp_path / "chunks"),
        read_predictions(tmp_path / "once"),
    )
    pd.testing.assert_frame_equal(frames_a, frames_b)
    pd.testing.assert_frame_equal(reads_a, reads_b)
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == [
        "predictions_per_frame.csv",
        "predictions_per_read.csv",
    ]
    assert (tmp_path / "chunks" / "predictions_per_frame.csv").read_text().splitlines()[:2] == [
        "frame_id,read_id,frame,p_other,p_virus",
        "r1_F1,r1,F1,0.9,0.1",
    ]


def test_prediction_writer_puts_reads_without_a_frame_in_read_order(tmp_path):
    keys = KEYS + 6  # called reads 1, 2, 3, 4; reads 0, 5 and 7 kept no frame
    writer = PredictionWriter(tmp_path / "nf")
    writer.add(keys[:4], FRAME_IDS[:4], PROBS[:4], no_frame=(np.array([0]), ["first"]))  # before read 1
    writer.add(keys[4:], np.array(FRAME_IDS[4:]), PROBS[4:], no_frame=(np.array([5, 7]), ["after", "last"]))
    written = writer.close()
    assert (written["reads"], written["no_frame_reads"], written["frames"]) == (4, 3, 6)
    reads = pd.read_csv(tmp_path / "nf" / "predictions_per_read.csv", keep_default_na=False)
    assert reads["read_id"].tolist() == ["first", "r1", "r2", "r3", "r1_chunk_2", "after", "last"]
    frameless = reads[reads["prediction"] == "no_frames"]
    assert frameless["read_id"].tolist() == ["first", "after", "last"] and (frameless["frames"] == 0).all()
    assert (frameless["max_virus"] == "").all()  # no score, not a made-up one
    only = PredictionWriter(tmp_path / "only")  # a rank whose reads all lack a frame
    only.add(KEYS[:0], FRAME_IDS[:0], PROBS[:0], no_frame=(np.array([3, 4]), ["a", "b"]))
    assert only.close()["no_frame_reads"] == 2


def test_agreement_leaves_out_reads_without_a_frame_on_both_sides():
    a = pd.DataFrame({"read_id": ["x", "y", "z"], "prediction": ["virus", "no_frames", "other"]})
    b = pd.DataFrame({"read_id": ["x", "y", "z"], "prediction": ["virus", "no_frames", "virus"]})
    result = prediction_agreement(a, b)
    assert (
        result["reads_union"] == 2 and result["agreement"] == 0.5 and result["reads_without_frames_both"] == 1
    )


def test_prediction_writer_quotes_ids_that_need_it_and_leaves_nothing_when_aborted(tmp_path):
    writer = PredictionWriter(tmp_path / "q")
    writer.add(np.array([0, 7]), ["a,b_F1", 'c"d_F2'], PROBS[:2])
    writer.close()
    frames, reads = read_predictions(tmp_path / "q")
    assert frames["frame_id"].tolist() == ["a,b_F1", 'c"d_F2'] and reads["read_id"].tolist() == ["a,b", 'c"d']
    failing = PredictionWriter(tmp_path / "aborted")
    failing.add(np.array([0, 3]), FRAME_IDS[:2], PROBS[:2])  # the background check fails
    with pytest.raises(RuntimeError, match="alignment check failed"):
        failing.close()
    assert list((tmp_path / "aborted").iterdir()) == []
