"""perfkit.suite.scaling: normalised figures, sizes, the warm-up and real tiny 03_scaling runs."""

import math

import pytest

from perfkit import criteria as crit
from perfkit.errors import UserError
from perfkit.suite import context, scaling
from perfkit.suite import params as suite_params
from suite_helpers import write_params, fake_summary


def test_normalise_scaling_reads_what_rank_scaling_gives():
    from perfkit.scaling_maths import rank_scaling

    single = fake_summary(tok=1000.0)
    multi = fake_summary(
        tok=1900.0,
        rank_imbalance=1.05,
        ranks=2,
        per_rank={"0": {"steady_tok_per_s": 950.0}, "1": {"steady_tok_per_s": 950.0}},
        gpu={
            "0": {"gpu_utilization_percent": {"measured": True, "mean": 75.0}},
            "1": {"gpu_utilization_percent": crit.not_measured("gone")},
        },
    )
    out = scaling.normalise_scaling(rank_scaling(single, multi), 2)
    assert (
        out["factor"] == pytest.approx(1.9)
        and out["efficiency"] == pytest.approx(0.95)
        and out["imbalance"] == 1.05
    )
    assert out["per_rank_tok_per_s"] == {"0": 950.0, "1": 950.0}
    assert out["per_rank_gpu_util"]["0"] == 75.0 and out["per_rank_gpu_util"]["1"]["measured"] is False


def test_run_predict_launches_one_cpu_process_through_torchrun_when_asked(tmp_path, monkeypatch):
    from perfkit.workload import predict
    from perfkit.workload.config import make_config

    calls = []
    monkeypatch.setattr(
        predict,
        "_launch_ranks",
        lambda cfg, weights, hidden, nproc, gpus: calls.append(("torchrun", nproc, gpus)) or {},
    )
    monkeypatch.setattr(
        predict, "run_chain", lambda cfg, member=None, **kw: calls.append(("in process", member)) or {}
    )
    (tmp_path / "s.fa").write_text(">r1\nATGAAACCCGGGTTTTAA\n")  # the in-process path checks its input first
    cfg = make_config(input=tmp_path / "s.fa", out_dir=tmp_path / "o", model="esm2_t6_8M", device="cpu")
    predict.run_predict(cfg, nproc=1)
    predict.run_predict(cfg, nproc=1, launch=True)
    predict.run_predict(cfg, nproc=2)
    assert calls == [("in process", None), ("torchrun", 1, False), ("torchrun", 2, False)]


def test_scaling_sizes_from_params(tmp_path):
    params = suite_params.load_suite_params(
        write_params(tmp_path, sample={"reads": 500}, scaling={"fit_reads": None, "max_reads": 300})
    )
    assert scaling.scaling_sizes(params, 500) == [150, 300]
    params = suite_params.load_suite_params(write_params(tmp_path, scaling={"fit_reads": [100, 900]}))
    with pytest.raises(UserError, match="within the sample"):
        scaling.scaling_sizes(params, 500)
    for bad, message in (([300, 100], "small then large"), ([100], "small then large")):
        with pytest.raises(UserError, match=message):
            suite_params.load_suite_params(write_params(tmp_path, scaling={"fit_reads": bad}))
    with pytest.raises(UserError, match="set one of them"):
        suite_params.load_suite_params(
            write_params(tmp_path, scaling={"fit_reads": [100, 200], "max_reads": 300})
        )


def test_warmup_reads_default_to_four_blocks_per_gpu_rank_and_none_on_cpu(tmp_path):
    params = suite_params.load_suite_params(write_params(tmp_path))
    assert params.scaling.warmup_reads is None
    # smoke: block_reads 64 in scaling.embed
    assert scaling.warmup_reads(params, gpus=True, nproc=2) == 4 * 64 * 2
    assert scaling.warmup_reads(params, gpus=False, nproc=2) == 0
    params = suite_params.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": 0}))
    assert scaling.warmup_reads(params, gpus=True, nproc=2) == 0
    with pytest.raises(UserError, match="warmup_reads"):
        suite_params.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": -1}))


def test_warmup_chain_runs_n_ranks_once_untimed_before_the_rounds(tmp_path):
    params = suite_params.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": 300}))
    launched = []

    class Ctx:
        sample_stats = {"reads": 250}  # a warm-up never asks for more reads than the sample has

        def __init__(self):
            self.params = params

        def embed_config(self, name, **knobs):
            return {"name": name, **knobs}

    def fake_predict(cfg, **kwargs):
        launched.append((cfg, kwargs))

    warmup = scaling.warmup_chain(Ctx(), {"nproc": 2, "gpus": True}, {"mode": "v2"}, fake_predict)
    assert len(launched) == 1
    cfg, kwargs = launched[0]
    assert cfg == {"name": "chain-warmup-2", "mode": "v2", "max_reads": 250}
    assert kwargs["nproc"] == 2 and kwargs["gpus"] is True and kwargs["launch"] is True
    assert (
        warmup["reads"] == 250
        and warmup["nproc"] == 2
        and warmup["wall_s"] >= 0
        and "untimed" in warmup["why"]
    )
    launched.clear()
    # explicit reads: CPU too
    assert scaling.warmup_chain(Ctx(), {"nproc": 2, "gpus": False}, {}, fake_predict) is not None
    Ctx.params = suite_params.load_suite_params(write_params(tmp_path, scaling={"warmup_reads": 0}))
    ctx = Ctx()
    ctx.params = Ctx.params
    launched.clear()
    assert scaling.warmup_chain(ctx, {"nproc": 2, "gpus": True}, {}, fake_predict) is None and not launched


@pytest.mark.slow
def test_real_scaling_launches_both_sides_through_torchrun(tiny):
    params, run_dir = tiny
    ctx = context.setup("03_scaling", params, run_dir, nproc=2, nodes=1)
    result = scaling.run_scaling(ctx)
    e2e = result["end_to_end"]
    assert e2e["sizes"] == [40, 80] and e2e["repeats"] == 1 and "torchrun on both sides" in e2e["launch"]
    for reads in (40, 80):
        runs = {side: result["rounds"][0][side][reads] for side in ("single", "multi")}
        for side, ranks in (("single", 1), ("multi", 2)):
            chain, stages = runs[side]["chain"], runs[side]["stages"]
            # launched: torchrun's time is the first stage, the chain's wall is the launching process's
            assert (
                chain["ranks"] == ranks
                and list(chain["stages_s"])[0] == "launch"
                and chain["stages_s"]["launch"] > 0
            )
            assert chain["end_to_end_s"] == pytest.approx(chain["launch_wall_s"], rel=1e-6)
            assert chain["plan"]["blocks"] == math.ceil(reads / 16)  # rank 0 planned, even for 1 rank
            assert stages["protein_embedding"]["distributed"]["launcher"] == "torchrun"
            assert stages["protein_embedding"]["distributed"]["world"] == ranks
        assert runs["single"]["chain"]["counts"] == runs["multi"]["chain"]["counts"]  # the same work
    assert e2e["measured_factor"]["median"] == pytest.approx(
        result["rounds"][0]["single"][80]["chain"]["end_to_end_s"]
        / result["rounds"][0]["multi"][80]["chain"]["end_to_end_s"]
    )
    headline = scaling.scaling_headline(result)
    source = headline["scaling_factor_end_to_end_source"]
    assert source == (
        "projected"
        if e2e["fit_check"]["holds"] and isinstance(e2e["projected_factor"]["median"], float)
        else "measured"
    )
    expected = headline[f"scaling_factor_end_to_end_{source}"]
    assert headline["scaling_factor_end_to_end"] == expected and headline["scaling_factor_end_to_end_reason"]
    # the stage factors carry their spread over the rounds, and the headline is its median
    for key, figure in (
        ("scaling_factor", result["scaling"]),
        ("scaling_factor_nucleotide", result["nucleotide"]),
    ):
        spread = headline[f"{key}_spread"]
        assert spread["repeats"] == 1 and spread["values"] == [pytest.approx(figure["factor"])]
        assert headline[key] == pytest.approx(spread["median"])
    figures = scaling.scaling_figures(ctx, result)
    assert {"scaling", "scaling_nucleotide", "scaling_end_to_end", "scaling_fit"} <= set(figures)
    assert "measured" in figures["scaling_fit"].texts[0].get_text()  # the caption states the definitions


def test_scaling_not_measurable_is_a_marker(tiny):
    params, run_dir = tiny
    ctx = context.setup("03_scaling", params, run_dir, nproc=1, nodes=1)
    result = scaling.run_scaling(ctx)
    assert (
        result["scaling_factor"]["measured"] is False and "at least 2" in result["scaling_factor"]["reason"]
    )
    ctx = context.setup("03_scaling", params, run_dir, nproc=2, nodes=2)
    assert "multi-node" in scaling.run_scaling(ctx)["scaling_factor"]["reason"]
    # gpus means GPUs: on this CPU machine `-p gpus 2` is NOT MEASURED, never 2 CPU processes passed off as GPUs
    ctx = context.setup("03_scaling", params, run_dir, gpus=2, nodes=1)
    result = scaling.run_scaling(ctx)
    assert result["scaling_factor_end_to_end"]["measured"] is False
    assert (
        "no GPU here" in result["scaling_factor_end_to_end"]["reason"]
        and "nproc=2" in result["scaling_factor"]["reason"]
    )
    ctx = context.setup("03_scaling", params, run_dir, gpus=2, nproc=2, nodes=1)
    assert "give one" in scaling.run_scaling(ctx)["scaling_factor"]["reason"]


@pytest.mark.slow
def test_the_cards_command_from_the_repo_root_exits_0_on_cpu_and_says_no_gpu(tmp_path):
    """`papermill notebooks/03_scaling.ipynb out.ipynb -p gpus 2`, as the design card writes it, from the
    repository root of a machine without GPUs: it runs, writes under outputs/, and says NOT MEASURED."""
    import json
    import subprocess
    import sys

    from suite_helpers import ROOT

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "notebooks/03_scaling.ipynb",
            str(tmp_path / "out.ipynb"),
            "-p",
            "gpus",
            "2",
            "--no-progress-bar",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((ROOT / "outputs" / "nbval" / "03_scaling" / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    factor = metrics["records"]["scaling_factor_end_to_end"]
    assert factor["measured"] is False and "no GPU here" in factor["reason"]
