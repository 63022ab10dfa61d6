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
