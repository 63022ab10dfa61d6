"""The kernels a run's model runs: the model built for a run (`build_model`), the config's kernel knobs put
on it (`set_model_kernels`, shared by the run, 02's profiler and the equivalence gate) and inductor's
settings around what compiles (`inductor_settings`)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from perfkit.workload import esm2, esm2_weights, v1
from perfkit.workload.config import EmbedConfig

if TYPE_CHECKING:  # the runner imports this module
    from perfkit.workload.runner import Run


def build_model(run: Run):
    """The run's model and where its weights came from.

    v1 ESM-2: fair-esm's own module. v1 nucleotide stage: our DNABERT-S module in fp32 (there is no
    other implementation offline; v1 differs in batching and precision). v2: our models; with
    random_init 'fair-esm' the ESM-2 weights are fair-esm's seeded init, as in a v1 run of the same seed.
    """
    cfg = run.cfg
    if cfg.mode == "v1" and not run.encoder.nucleotide:
        return v1.build_fairesm_model(cfg, run.device)
    if cfg.mode == "v1" or cfg.random_init == "perfkit" or cfg.weights is not None:
        model, info = run.encoder.build(cfg.weights, seed=cfg.seed, device=run.device, dtype=run.dtype)
    else:
        reference, info = v1.build_fairesm_model(cfg.model_copy(update={"precision": "fp32"}), run.device)
        model, _ = run.encoder.build(None, seed=cfg.seed, device=run.device, dtype=run.dtype)
        esm2_weights.load_fairesm_state_dict(model, reference.state_dict())
        del reference
    set_model_kernels(model, cfg, run.encoder)
    return model, info


def set_model_kernels(model, cfg: EmbedConfig, encoder) -> None:
    """The kernels the config names, as the run, 02's profiler and the equivalence gate all take them."""
    if encoder.nucleotide:
        model.packed_attention = cfg.nt_attention
    else:
        esm2.set_kernels(
            model,
            attention=cfg.attention,
            gelu_epilogue=cfg.gelu_epilogue,
            residual_epilogue=cfg.residual_epilogue,
        )


def takes_multi_kernel(cfg: EmbedConfig, encoder, compiled: bool) -> bool:
    """multi_kernel holds for ESM-2 compiled on CUDA, where it was measured; never for the nucleotide stage."""
    return bool(cfg.multi_kernel and compiled and not encoder.nucleotide)


@contextmanager
def inductor_settings(multi_kernel: bool):
    """Inductor's settings for what compiles inside: they must hold at the first call, when it compiles."""
    if not multi_kernel:
        yield
        return
    # the multi-kernel's on-disk record of its pick crashes the next process that compiles the same graph
    # (torch 2.11: its kernels, loaded from inductor's cache, have no Triton hash lock): pick again each time
    before = os.environ.get(MULTI_KERNEL_CACHE_OFF)
    os.environ[MULTI_KERNEL_CACHE_OFF] = "1"
    try:
        with torch._inductor.config.patch({"triton.multi_kernel": 1}):
            yield
    finally:
        if before is None:
            os.environ.pop(MULTI_KERNEL_CACHE_OFF, None)
        else:
            os.environ[MULTI_KERNEL_CACHE_OFF] = before


MULTI_KERNEL_CACHE_OFF = "TORCHINDUCTOR_DISABLE_MULTI_KERNEL_CACHE"
