"""Pieces both encoders (ESM-2, DNABERT-S) share: re-padded attention, segment pooling, random init."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def empty_model_on(factory, device, dtype) -> nn.Module:
    """Build a model without allocating or initialising it on the host: meta, then empty on `device`."""
    from perfkit.errors import UserError

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was asked for but no CUDA device is available", "run on a GPU node or pass device='cpu'")
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
