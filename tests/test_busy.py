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
