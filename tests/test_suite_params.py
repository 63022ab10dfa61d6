"""perfkit.suite.params: the params schema and its one-line errors."""

import pytest

from perfkit.errors import UserError
from perfkit.suite import params as suite_params
from suite_helpers import ROOT, SMOKE, write_params


SCALING_CRITERION = {"h200x4.yaml": "four_gpu_scaling", "h200x8.yaml": "eight_gpu_scaling"}


def test_every_shipped_params_file_is_tested():
    assert {p.name for p in (ROOT / "params").glob("*.yaml")} == {
        "smoke.yaml",
        "h200.yaml",
        "h200x2.yaml",
        "h200x4.yaml",
        "h200x8.yaml",
        "gpu-check.yaml",
    }


@pytest.mark.parametrize(
    "name", ["smoke.yaml", "h200.yaml", "h200x2.yaml", "h200x4.yaml", "h200x8.yaml", "gpu-check.yaml"]
)
def test_shipped_params_are_valid(name):
    params = suite_params.load_suite_params(ROOT / "params" / name)
    names = [c["name"] for c in params.criteria]
    assert {
        "full_sample_time",
        "gpu_utilisation",
        "packing_efficiency",
        SCALING_CRITERION.get(name, "two_gpu_scaling"),
        "speedup_vs_v1",
        "equivalence_gate",
        "prediction_agreement",
        "nt_equivalence_gate",
    } <= set(names)


@pytest.mark.parametrize("name", [p.name for p in sorted((ROOT / "params").glob("*.yaml"))])
def test_the_gate_runs_on_the_benchmarked_model_or_the_criterion_names_its_model(name):
    # finding 5 of issue 15: the gate ran esm2_t33_650M while its criterion spoke of the run's model (the 3B)
    params = suite_params.load_suite_params(ROOT / "params" / name)
    gated = params.baseline.equivalence.model
    if gated in (None, params.embed.get("model")):
        return
    criterion = next(c for c in params.criteria if c["metric"] == "equivalence_gate_passed")
    assert gated in criterion["description"], f"{name}: gates {gated} but its criterion does not say so"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bogus": 1}, "bogus"),
        ({"sample": {"reads": "many"}}, "sample.reads"),
        ({"tuning": {"grid": {"colour": [1, 2]}}}, "unknown knob"),
        ({"tuning": {"grid": {"token_budget": []}}}, "no values"),
        ({"embed": {"max_reads": 10}}, "set by the suite"),
        ({"embed": {"token_budget": 8}}, "token_budget"),
        ({"embed": {"model": "esm9"}}, "unknown model"),
        ({"full_validation": {"max_seconds": 60}}, "capped by reads"),
        ({"profiling": {"max_seconds": 60}}, "max_reads instead"),
        (
            {"baseline": {"v1_max_seconds": 10}},
            "capped by reads, every variant on the same reads: set baseline.reads",
        ),
        ({"baseline": {"agreement": {"reads": 10}}}, "moved to baseline.chains"),
        ({"baseline": {"embed": {"max_reads": 10}}}, "not in baseline.embed"),
        ({"baseline": {"chains": {"forms": ["newest"]}}}, "baseline.chains.forms"),
        (
            {
                "criteria": [
                    {"name": "x", "metric": "y", "comparison": ">=", "target": 1, "source": "07_extra"}
                ]
            },
            "source",
        ),
        (
            {
                "criteria": [
                    {"name": "x", "metric": "y", "comparison": "~", "target": 1, "source": "01_baseline"}
                ]
            },
            "comparison",
        ),
    ],
)
def test_bad_params_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        suite_params.load_suite_params(write_params(tmp_path, **changes))


def test_overrides_merge_deeply():
    params = suite_params.load_suite_params(SMOKE, {"tuning": {"max_runs": 2}})
    assert params.tuning.max_runs == 2 and params.tuning.grid  # the rest of the section kept
