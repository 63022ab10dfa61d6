"""The correctness gate: our packed ESM-2 against fair-esm's own model, same weights.

fair-esm (fp32, padded, its own batch converter) is the reference; our model runs
the packed path at the precision and on the device under test. Results are plain
JSON-serialisable dicts so notebooks can record them as they are.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from perfkit.errors import UserError
from perfkit.workload import esm2, esm2_weights

# precision name -> torch dtype
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# gate thresholds
FP32_MAX_RELATIVE_ERROR = 1e-4
HALF_COSINE_HIGH, HALF_SHARE_AT_HIGH = 0.999, 0.999  # >= 99.9 % of rows at cosine >= 0.999
HALF_COSINE_MIN = 0.99  # and every row at cosine >= 0.99
# the reference is degenerate if its rows barely differ: spread around the mean row,
# relative to the row norm, below this
NONDEGENERATE_MIN_SPREAD = 1e-3


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Row-wise agreement of candidate [n, d] with reference [n, d]."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: {ref.shape} vs {cand.shape}")
    ref_norm = np.linalg.norm(ref, axis=1)
    cand_norm = np.linalg.norm(cand, axis=1)
    tiny = np.finfo(np.float64).tiny
    relative_error = np.linalg.norm(cand - ref, axis=1) / np.maximum(ref_norm, tiny)
    cosine = (ref * cand).sum(1) / np.maximum(ref_norm * cand_norm, tiny)

    # degenerate reference: (nearly) the same vector for every sequence makes cosine trivially high
    spread = np.linalg.norm(ref - ref.mean(0), axis=1).mean() / max(ref_norm.mean(), tiny)
    unit = ref / np.maximum(ref_norm, tiny)[:, None]
    pairwise = unit @ unit.T
    off_diagonal = pairwise[~np.eye(len(ref), dtype=bool)]
    return {
        "n": int(len(ref)),
        "max_relative_error": float(relative_error.max()),
        "p99_relative_error": float(np.percentile(relative_error, 99)),
        "min_cosine": float(cosine.min()),
        "share_cosine_ge_0999": float((cosine >= HALF_COSINE_HIGH).mean()),
        "reference_spread": float(spread),
        "reference_mean_pairwise_cosine": float(off_diagonal.mean()) if off_diagonal.size else 1.0,
        "reference_nondegenerate": bool(len(ref) > 1 and spread >= NONDEGENERATE_MIN_SPREAD),
    }


def gate(stats: dict, precision: str) -> dict:
    """Pass/fail for `stats` (from compare_embeddings) at `precision` ('fp32', 'bf16', 'fp16')."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        thresholds = {"max_relative_error": FP32_MAX_RELATIVE_ERROR}
        numerics_ok = stats["max_relative_error"] <= FP32_MAX_RELATIVE_ERROR
    else:
        thresholds = {
            "cosine_high": HALF_COSINE_HIGH,
            "share_at_cosine_high": HALF_SHARE_AT_HIGH,
            "min_cosine": HALF_COSINE_MIN,
        }
        numerics_ok = (
            stats["share_cosine_ge_0999"] >= HALF_SHARE_AT_HIGH and stats["min_cosine"] >= HALF_COSINE_MIN
        )
    return {
        "passed": bool(numerics_ok and stats["reference_nondegenerate"]),
        "numerics_ok": bool(numerics_ok),
        "reference_nondegenerate": bool(stats["reference_nondegenerate"]),
        "precision": precision,
        "thresholds": thresholds,
        "stats": stats,
    }


def default_proteins(n: int = 64, seed: int = 0, min_len: int = 10, max_len: int = 200) -> list[str]:
    """Seeded random proteins over the 20 amino acids, with a few X (-> a real token) sprinkled in."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWYX"))
    weights = np.r_[np.full(20, 0.995 / 20), 0.005]
    return [
        "".join(rng.choice(letters, size=int(rng.integers(min_len, max_len + 1)), p=weights))
        for _ in range(n)
    ]


def batches_by_tokens(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Consecutive index batches whose token counts stay within token_budget (one long sequence may exceed it)."""
    batches, current, used = [], [], 0
    for i, length in enumerate(lengths):
        if current and used + length > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += length
    return batches + ([current] if current else [])


@contextmanager
def true_fp32():
    """Matmuls in full fp32 for the block (TF32 off), as a reference needs; the setting restored after."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def fairesm_reference_model(model, device):
    """fair-esm's own ESM2 module (eval, fp32) holding `model`'s weights: built on the meta device, then filled.

    Its rotary tables are buffers, not weights: they are computed here as fair-esm computes them."""
    import esm

    config = model.config
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.device("meta"):
        reference = esm.model.esm2.ESM2(
            config.num_layers,
            config.embed_dim,
            config.attention_heads,
            alphabet=alphabet,
            token_dropout=config.token_dropout,
        )
    reference = reference.to_empty(device=device).eval()
    weights = {name: tensor.float() for name, tensor in esm2_weights.fairesm_state_dict(model).items()}
    missing, unexpected = reference.load_state_dict(weights, strict=False)
    if unexpected or any(
        not name.startswith(("lm_head.", "contact_head.")) and not name.endswith("inv_freq")
        for name in missing
    ):
        raise RuntimeError(
            f"fair-esm reference: weights missing {missing[:3]} or unexpected {unexpected[:3]}"
        )
    for module in reference.modules():
        if hasattr(module, "inv_freq"):
            dim = module.inv_freq.numel() * 2
            module.inv_freq.copy_(1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim)))
    return reference


def fairesm_reference(reference_model, alphabet, proteins, device, token_budget) -> np.ndarray:
    """fair-esm's embeddings: padded fp32 batches, its batch converter, mean over residues 1..len."""
    converter = alphabet.get_batch_converter()
    layer = reference_model.num_layers
    out = []
    for batch in batches_by_tokens([len(p) + 2 for p in proteins], token_budget):
        _, _, tokens = converter([(str(i), proteins[i]) for i in batch])
        with torch.no_grad():
            reps = reference_model(tokens.to(device), repr_layers=[layer])["representations"][layer]
        for row, i in enumerate(batch):
            out.append(reps[row, 1 : len(proteins[i]) + 1].mean(0).float().cpu().numpy())
    return np.stack(out)


def packed_embeddings(model, proteins, device, token_budget) -> np.ndarray:
    """Our model's embeddings through the packed path, batch by batch."""
    tokens, lengths = esm2.encode_proteins(proteins)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    out = []
    for batch in batches_by_tokens(lengths.tolist(), token_budget):
        lo, hi = starts[batch[0]], starts[batch[-1] + 1]
        packed = esm2.packed_inputs(tokens[lo:hi], lengths[batch[0] : batch[-1] + 1])
        out.append(model.forward_packed(**esm2.packed_to_torch(packed, device)).cpu().numpy())
    return np.concatenate(out)


# the embed knobs that choose the packed path's kernels: the gate takes whichever a run's params set
KERNEL_KNOBS = ("compile", "compile_scope", "attention", "gelu_epilogue", "residual_epilogue", "multi_kernel")


def run_equivalence_gate(
    model_name: str = "esm2_t6_8M",
    proteins: list[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    seed: int = 0,
    token_budget: int = 8192,
    compile: bool = False,
    compile_scope: str = "blocks",
    attention: str = "auto",
    gelu_epilogue: bool = False,
    residual_epilogue: bool = False,
    multi_kernel: bool = False,
) -> dict:
    """fair-esm (fp32, padded) vs our packed path (precision, device) with the same seeded random weights.

    KERNEL_KNOBS (compile, compile_scope, attention, gelu_epilogue, residual_epilogue, multi_kernel): the kernels
    a run with these settings takes (compilation on CUDA only)."""
    import esm  # only the gate needs fair-esm

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "CUDA was asked for but no CUDA device is available", "run on a GPU node or pass device='cpu'"
        )
    config = esm2.get_config(model_name)
    proteins = default_proteins(seed=seed) if proteins is None else list(proteins)

    # our model with its seeded random weights, then fair-esm's own module holding the same weights in fp32
    # (built on the meta device and filled, so a 3B reference takes seconds, not a host-side init)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model, _ = esm2.build_model(model_name, seed=seed, device=device, dtype=torch.float32)
    reference_model = fairesm_reference_model(model, device)
    with true_fp32():
        reference = fairesm_reference(reference_model, alphabet, proteins, device, token_budget)
    del reference_model

    # the packed path at the precision under test: the fp32 weights rounded once, as a run's model is
    model = model.to(PRECISIONS[precision])
    esm2.set_kernels(
        model, attention=attention, gelu_epilogue=gelu_epilogue, residual_epilogue=residual_epilogue
    )
    compiled = bool(compile and torch.device(device).type == "cuda")
    if compiled:
        model.compile_blocks(whole_stack=compile_scope == "stack")
    from perfkit.workload.kernels import inductor_settings

    with inductor_settings(multi_kernel and compiled):
        candidate = packed_embeddings(model, proteins, device, token_budget)

    result = gate(compare_embeddings(reference, candidate), precision)
    result.update(
        {
            "model_name": config.name,
            "device": str(device),
            "num_proteins": len(proteins),
            "num_tokens": int(sum(len(p) + 2 for p in proteins)),
            "seed": seed,
            "token_budget": token_budget,
            "compiled": compiled,
            "compile_scope": compile_scope if compiled else None,
            "gelu_epilogue": gelu_epilogue,
            "residual_epilogue": residual_epilogue,
            "multi_kernel": multi_kernel and compiled,
            "attention_calls": dict(model.attention_calls),
            "attention_path": max(model.attention_calls, key=model.attention_calls.get),
        }
    )
    return result
