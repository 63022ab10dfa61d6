"""perfkit.workload.kernels: the config's kernel knobs on the model, and inductor's settings around compiling."""

import os

from perfkit.workload.config import make_config


def test_multi_kernel_holds_for_the_compiled_protein_stage_only(small_fasta, tmp_path):
    """The inductor setting that was measured on ESM-2 never reaches the nucleotide stage or an eager run, and
    while it holds the multi-kernel's on-disk pick is off (it crashed a second process on a warm cache)."""
    import torch

    from perfkit.workload.encoders import encoder_for
    from perfkit.workload.kernels import inductor_settings, takes_multi_kernel

    cfg = make_config(input=small_fasta, out_dir=tmp_path / "o", multi_kernel=True)
    assert takes_multi_kernel(cfg, encoder_for("esm2_t6_8M"), compiled=True)
    assert not takes_multi_kernel(cfg, encoder_for("dnabert_mini"), compiled=True)
    assert not takes_multi_kernel(cfg, encoder_for("esm2_t6_8M"), compiled=False)
    assert not takes_multi_kernel(
        cfg.model_copy(update={"multi_kernel": False}), encoder_for("esm2_t6_8M"), True
    )
    before = torch._inductor.config.triton.multi_kernel
    with inductor_settings(True):
        assert torch._inductor.config.triton.multi_kernel == 1
        assert os.environ["TORCHINDUCTOR_DISABLE_MULTI_KERNEL_CACHE"] == "1"
    assert torch._inductor.config.triton.multi_kernel == before


def test_the_kernel_knobs_reach_the_model_through_one_setter(small_fasta, tmp_path):
    """The run, 02's profiler and the gate set the packed path's kernels through set_model_kernels: every ESM-2
    knob lands on the model (the vectors alone could not show it: on CPU each knob gives the same vectors)."""
    from perfkit.workload import esm2
    from perfkit.workload.encoders import encoder_for
    from perfkit.workload.kernels import set_model_kernels

    cfg = make_config(
        input=small_fasta,
        out_dir=tmp_path / "o",
        attention="flex",
        gelu_epilogue=True,
        residual_epilogue=True,
    )
    model, _ = esm2.build_model("esm2_t6_8M")
    set_model_kernels(model, cfg, encoder_for("esm2_t6_8M"))
    assert model.packed_attention == "flex" and model.residual_epilogue
    assert all(layer.gelu_epilogue for layer in model.layers)
