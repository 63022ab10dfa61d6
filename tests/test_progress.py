import io
import time

from perfkit.progress import LiveProgress


def test_postfix_shows_rates_and_is_rate_limited():
    out = io.StringIO()
    bar = LiveProgress(total=1000, min_interval_s=0.05, file=out, disable=False)
    bar.set_gpu_util(83.0)
    for _ in range(50):
        bar.update(sequences=10, real_tokens=990, budget_tokens=1000)
    assert bar.postfix_updates <= 2  # 50 updates in far less than 2 intervals
    time.sleep(0.06)
    bar.update(sequences=10, real_tokens=990, budget_tokens=1000)
    assert "gpu=83%" in bar.postfix() and "pack=99.0%" in bar.postfix()
    bar.close()
    text = out.getvalue()
    assert "510/1000" in text and "tok/s=" in text


def test_the_bar_can_count_reads_while_the_rates_count_sequences():
    out = io.StringIO()
    bar = LiveProgress(
        total=40, unit="read", desc="protein_embedding: loading the model", file=out, disable=False
    )
    bar.set_description("protein_embedding")
    bar.update(0, 0, 0, advance=8)  # a worker's reads whose frames were all skipped or absent
    bar.update(sequences=30, real_tokens=900, budget_tokens=1000, advance=32)
    bar.close()
    text = out.getvalue()
    assert "40/40" in text and "100%" in text and "read" in text and bar.sequences == 30
    assert "protein_embedding: loading the model" in text  # said while the model was being built
