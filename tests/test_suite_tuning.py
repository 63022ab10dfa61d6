"""perfkit.suite.tuning: the sweep (injected measurements) and the best params file."""

import pytest

from perfkit.suite import context, tuning
from perfkit.suite import params as suite_params
from suite_helpers import write_params


def tuning_ctx(tmp_path, **tuning):
    params = write_params(tmp_path, sample={"reads": 20}, tuning=tuning)
    return context.setup("04_tuning", params, tmp_path)


def fake_measure(speeds, calls):
    def measure(knobs, index):
        calls.append(dict(knobs))
        tok = speeds(knobs)
        if tok is None:
            return {"status": "error", "error": "boom", "tok_per_s": None}
        return {"status": "ok", "error": None, "tok_per_s": tok}

    return measure


def test_coordinate_sweep_keeps_each_knobs_best(tmp_path):
    ctx = tuning_ctx(
        tmp_path,
        strategy="coordinate",
        max_runs=10,
        grid={"token_budget": [2048, 4096, 8192], "num_workers": [0, 1, 2]},
    )
    calls = []
    result = tuning.run_tuning(
        ctx, measure=fake_measure(lambda k: k["token_budget"] / 1000 + k["num_workers"] * 10, calls)
    )
    assert calls[0] == {"token_budget": 2048, "num_workers": 1}  # the params' embed values first
    assert result["best_config"] == {"token_budget": 8192, "num_workers": 2}
    assert len(calls) == len({tuple(c.values()) for c in calls}) == 5  # never the same point twice
    assert all(c["token_budget"] == 8192 for c in calls[3:])  # second knob swept at the first knob's best


def test_sweep_stops_at_budget_or_target_and_fails_loudly(tmp_path):
    ctx = tuning_ctx(
        tmp_path, strategy="grid", max_runs=3, grid={"token_budget": [1024, 2048], "num_workers": [0, 1]}
    )
    calls = []
    result = tuning.run_tuning(ctx, measure=fake_measure(lambda k: 1.0, calls))
    assert len(calls) == 3 and "budget" in result["stop_reason"]
    ctx = tuning_ctx(
        tmp_path,
        strategy="grid",
        max_runs=9,
        target_tok_per_s=10.0,
        grid={"token_budget": [1024, 2048], "num_workers": [0, 1]},
    )
    calls = []
    result = tuning.run_tuning(ctx, measure=fake_measure(lambda k: k["token_budget"] / 200, calls))
    assert len(calls) == 3 and "target" in result["stop_reason"] and result["best_tok_per_s"] >= 10
    with pytest.raises(RuntimeError, match="every tuning run failed"):
        tuning.run_tuning(ctx, measure=fake_measure(lambda k: None, []))


def test_best_params_is_a_usable_params_file(tmp_path):
    ctx = tuning_ctx(tmp_path, grid={"token_budget": [2048]})
    path = tuning.write_best_params(ctx, {"token_budget": 2048, "num_workers": 0})
    params = suite_params.load_suite_params(path)
    assert params.embed["token_budget"] == 2048 and params.embed["num_workers"] == 0
    assert params.embed["model"] == "esm2_t6_8M" and params.name.endswith("-tuned")
