"""Helpers shared by the suite tests (perfkit.suite.*, perfkit.projection, perfkit.scaling_maths,
perfkit.utilisation, perfkit.verdict)."""

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"


def write_params(tmp_path, **changes) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fake_summary(tok=1000.0, seq=20.0, gpu=None, per_rank=None, windows=(), capped=True, **extra):
    t = {
        "ranks": 1,
        "sequences": 500,
        "real_tokens": 25_000,
        "batches": 10,
        "wall_s": 30.0,
        "seq_per_s": seq,
        "tok_per_s": tok and tok * 0.9,
        "steady_seq_per_s": seq,
        "steady_tok_per_s": tok,
        "device_busy_fraction": 0.9,
        "loader_wait_fraction": 0.01,
        "packing_efficiency": 0.95,
        "padding_waste": 0.0,
        "rank_imbalance": 1.0,
    }
    t.update(extra)
    return {
        "throughput": t,
        "per_rank": per_rank or {"0": t},
        "gpu": gpu or {},
        "windows": list(windows),
        "mfu": 0.6,
        "stages_s": {"model_load": 3.6},
        "config": {"mode": "v2", "layout": "packed", "window_s": 10.0},
        "checkpoint": {"share_of_wall": 0.01},
        "bottleneck": {"verdict": "device-bound"},
        "run": {
            "mode": "v2",
            "precision": "bf16",
            "device": "cuda:0",
            "capped": capped,
            "attention_path": {"varlen_attn": 9, "sdpa_repadded": 0},
        },
    }


def write_metrics(run_dir, stem, records):
    (run_dir / stem).mkdir(parents=True, exist_ok=True)
    (run_dir / stem / "metrics.json").write_text(json.dumps({"status": "complete", "records": records}))


GOOD = {
    "01_baseline": {
        "speedup_chain_v2_over_v1": 6.0,
        "equivalence_gate_passed": True,
        "prediction_agreement_v1_v2": 0.999,
        "nt_equivalence_gate_passed": True,
    },
    "02_profiling": {"device_busy_fraction": 0.9},
    "03_scaling": {"scaling_factor_end_to_end": 1.95},
    "04_tuning": {"best_tok_per_s": 1.0},
    "05_full_validation": {
        "projected_hours_end_to_end": 8.0,
        "gpu_util_full_sample": 80.0,
        "packing_efficiency": 0.97,
    },
}


TINY = {
    "sample": {"reads": 160},
    "embed": {
        "nt_model": "dnabert_mini",
        "token_budget": 1024,
        "buffer_size": 128,
        "block_reads": 64,
        "num_workers": 0,
        "window_s": 0.5,
        "warmup_batches": 1,
    },
    "baseline": {
        "reads": 60,
        "repeats": 2,
        "equivalence": {"proteins": 4, "token_budget": 1024},
        "chains": {"reads": 30, "hidden": 16, "warmup_reads": 8, "repeats": 2},
        "nt_equivalence_reads": 4,
    },
    "profiling": {"max_reads": 120, "profiler_batches": 1, "profiler_warmup": 1, "top_kernels": 5},
    "tuning": {"max_reads": 60, "max_runs": 2, "grid": {"token_budget": [512, 1024]}},
    "full_validation": {"max_reads": None, "checkpoint_every_sequences": 50},
    "scaling": {"fit_reads": [40, 80], "embed": {"num_workers": 0, "block_reads": 16}},
}
