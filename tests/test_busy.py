import time

import pytest
import torch

from perfkit.busy import DeviceBusyTimer


def test_cpu_span_measures_host_compute_time():
    timer = DeviceBusyTimer("cpu")
    assert timer.source == "host-clock"
    with timer.measure() as span:
        time.sleep(0.05)
    assert 0.045 <= span.seconds <= 0.2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_span_resolves_lazily_and_matches_kernel_time():
    timer = DeviceBusyTimer("cuda")
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    span = timer.start()
    for _ in range(20):
        a @ a
    timer.stop(span)
    unresolved_right_after_launch = span.seconds is None
    seconds = span.wait()
    assert seconds > 0
    assert unresolved_right_after_launch  # the launch returned before the device finished: no sync


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_span_start_is_when_the_device_began_it_not_the_launch():
    """Two spans launched back to back: the second starts on the device when the first ends, long after its
    launch on the host."""
    timer = DeviceBusyTimer("cuda")
    a = torch.randn(4096, 4096, device="cuda")
    spans, launched = [], []
    for _ in range(2):
        launched.append(time.perf_counter())
        span = timer.start()
        for _ in range(50):
            a @ a
        spans.append(timer.stop(span))
    first, second = (s.wait() for s in spans)
    assert spans[1].start_host - launched[1] > 0.5 * first  # queued behind the first span's work
    assert spans[1].start_host == pytest.approx(spans[0].start_host + first, abs=0.01)
