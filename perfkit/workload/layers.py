"""Pieces both encoders (ESM-2, DNABERT-S) share: re-padded attention, segment pooling, random init."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def empty_model_on(factory, device, dtype) -> nn.Module:
    """Build a model without allocating or initialising it on the host: meta, then empty on `device`."""
    from perfkit.errors import UserError

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "CUDA was asked for but no CUDA device is available", "run on a GPU node or pass device='cpu'"
        )
    if device.type == "cpu":
        # on the host a plain build costs less than meta's first use, which imports torch._dynamo (~2 s per
        # process, most of a CPU smoke run); the caller's init or weights overwrite every value either way
        return factory().to(dtype=dtype).eval()
    with torch.device("meta"):
        model = factory()
    return model.to(dtype=dtype).to_empty(device=device).eval()


def repadded_attention(q, k, v, *, slot, num_seqs: int, max_seqlen: int, mask, scale=None):
    """Packed q, k, v [N, H, hd] -> a padded [B, H, T, hd] view -> one SDPA -> packed [N, H, hd].

    `slot` is each token's row in the padded [B*T] view (seq_index * T + position); `mask` is
    SDPA's attn_mask for the padded view (bool: True = attend, or an additive float bias).
    """

    def pad(t):
        out = t.new_zeros(num_seqs * max_seqlen, *t.shape[1:]).index_copy_(0, slot, t)
        return out.view(num_seqs, max_seqlen, *t.shape[1:]).transpose(1, 2)

    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).flatten(0, 1)[slot]


def pool_segments(x, pool_weight, seq_index, num_seqs: int):
    """Weighted sum of token states per sequence (float32): mean pooling when weights are 1/len."""
    weighted = x.float() * pool_weight.float()[:, None]
    return torch.zeros(num_seqs, x.shape[-1], device=x.device).index_add_(0, seq_index, weighted)


@torch.no_grad()
def init_normal_(model: nn.Module, generator: torch.Generator, std: float = 0.02) -> nn.Module:
    """Linear/Embedding weights ~ N(0, std), biases 0, padding rows 0, LayerNorm 1/0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, std, generator=generator)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    return model


@functools.cache
def compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


# flex_attention's tile: the block mask lists, per 128-query tile, the 128-key tiles it reads
FLEX_BLOCK = 128


def flex_block_mask(seq_index, cu_seqlens):
    """flex BlockMask for packed tokens [N]: a token sees only tokens of its own sequence.

    Built in O(tiles^2) integer ops from the packing itself (a query tile can only reach the key tiles
    between the first token of its first sequence and the last token of its last one), instead of
    evaluating the mask on all N x N pairs as create_block_mask does: at a 64K-token pack that is
    4 G evaluations a forward. Every listed tile is partial (the mask applies inside it). No host sync."""
    from torch.nn.attention.flex_attention import BlockMask

    n = seq_index.shape[0]
    tiles = -(-n // FLEX_BLOCK)
    device = seq_index.device
    first = torch.arange(tiles, device=device) * FLEX_BLOCK
    last = torch.clamp(first + FLEX_BLOCK, max=n) - 1
    cu = cu_seqlens.long()
    lo = cu[seq_index[first]] // FLEX_BLOCK
    hi = (cu[seq_index[last] + 1] - 1) // FLEX_BLOCK
    # row i lists tiles lo_i, lo_i + 1, ...; entries past its count are never read
    indices = torch.clamp(lo[:, None] + torch.arange(tiles, device=device)[None, :], max=tiles - 1)
    counts = hi - lo + 1

    def same_sequence(b, h, q_idx, kv_idx):
        return seq_index[q_idx] == seq_index[kv_idx]

    return BlockMask.from_kv_blocks(
        counts.to(torch.int32)[None, None],
        indices.to(torch.int32)[None, None],
        BLOCK_SIZE=FLEX_BLOCK,
        mask_mod=same_sequence,
        seq_lengths=(n, n),
        compute_q_blocks=False,
    )


def flex_packed_attention(
    q, k, v, block_mask, *, scale=None, score_mod=None, compiled: bool, inside_compiled: bool = False
):
    """Packed [N, H, hd] attention under `block_mask` (see flex_block_mask), scores changed by `score_mod`
    (flex's signature: score, b, h, q_idx, kv_idx) if given.

    `inside_compiled`: the caller is itself compiled (compiled blocks), which compiles flex with it."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, N, hd]
    if inside_compiled:
        out = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    elif compiled:
        out = compiled_flex_attention()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    else:
        with warnings.catch_warnings():  # eager flex is slow, and we know: only small CPU checks use it
            warnings.filterwarnings("ignore", message=".*flex_attention.*")
            out = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out.squeeze(0).transpose(0, 1)
