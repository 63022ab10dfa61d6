"""ESM-2 in one file: configs, tokeniser, packed inputs, model, weight loading.

Numerics follow fair-esm's `esm.model.esm2.ESM2` (pre-LN transformer, rotary
q/k, exact GELU, token-dropout rescale, final `emb_layer_norm_after`), but the
layout is built for throughput: one fused qkv projection, rotary tables made
once per forward, and a packed (varlen) attention path with no padding.

Inputs come in two shapes:
  padded  tokens [B, T]   <cls> residues <eos> <pad>...
  packed  tokens [N]      sequences back to back, each <cls> residues <eos>,
                          described by cu_seqlens [B+1] (FlashAttention style).
Both return the mean over residues of the final hidden states ([B, D], float32).

fair-esm itself is never imported here (only tests and the equivalence gate do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from perfkit.errors import UserError
from perfkit.workload import esm2_weights
from perfkit.workload.layers import (
    empty_model_on,
    flex_block_mask,
    flex_packed_attention,
    init_normal_,
    pool_segments,
    repadded_attention,
)

# ----------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class ESM2Config:
    name: str
    num_layers: int
    embed_dim: int
    attention_heads: int
    vocab_size: int = 33  # ESM-1b alphabet
    token_dropout: bool = True  # all released ESM-2 models were trained with it

    @property
    def ffn_dim(self) -> int:
        return 4 * self.embed_dim

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads


CONFIGS = {
    c.name: c
    for c in [
        ESM2Config("esm2_t6_8M", 6, 320, 20),
        ESM2Config("esm2_t12_35M", 12, 480, 20),
        ESM2Config("esm2_t30_150M", 30, 640, 20),
        ESM2Config("esm2_t33_650M", 33, 1280, 20),
        ESM2Config("esm2_t36_3B", 36, 2560, 40),
        ESM2Config("esm2_t48_15B", 48, 5120, 40),
    ]
}


def get_config(name: str) -> ESM2Config:
    # accept fair-esm / HF spellings too: "esm2_t33_650M_UR50D", "facebook/esm2_t33_650M_UR50D"
    short = name.split("/")[-1].removesuffix("_UR50D")
    if short not in CONFIGS:
        raise UserError(f"unknown ESM-2 model {name!r}", f"use one of {', '.join(CONFIGS)}")
    return CONFIGS[short]


def flops_per_token(config: ESM2Config, seq_len: int | None = None) -> float:
    """Matmul FLOPs of one forward, per token.

    Convention: 2 FLOPs per multiply-add of every Linear layer (qkv 3d^2, out d^2,
    fc1 4d^2, fc2 4d^2 -> 24*d^2 per layer). Embedding lookup, biases, layer
    norms, GELU, softmax and the (unused) LM head are not counted.
    seq_len=None: attention score/value matmuls excluded. With seq_len=T (the
    token's sequence length, <cls>/<eos> included) add QK^T and AV: 2*2*T*d per
    layer (full bidirectional attention, no causal halving).
    """
    d, layers = config.embed_dim, config.num_layers
    flops = 2 * layers * (3 * d * d + d * d + 2 * d * config.ffn_dim)
    if seq_len is not None:
        flops += layers * 4 * seq_len * d
    return float(flops)


# ----------------------------------------------------------------------------
# tokeniser (ESM-1b alphabet, as esm.data.Alphabet.from_architecture("ESM-1b"))

AMINO_ACID_TOKENS = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
ALPHABET_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *AMINO_ACID_TOKENS, "<null_1>", "<mask>"]
CLS_IDX, PAD_IDX, EOS_IDX, UNK_IDX = 0, 1, 2, 3
MASK_IDX = ALPHABET_TOKENS.index("<mask>")  # 32

# byte -> token id; everything not in the alphabet (lowercase too, as fair-esm) -> <unk>
_BYTE_TO_TOKEN = np.full(256, UNK_IDX, dtype=np.int64)
for _i, _ch in enumerate(AMINO_ACID_TOKENS):
    _BYTE_TO_TOKEN[ord(_ch)] = 4 + _i


def encode_proteins(proteins: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Protein strings -> (flat int64 tokens with <cls>/<eos> per sequence, int32 lengths incl. both)."""
    residue_counts = np.fromiter((len(p) for p in proteins), dtype=np.int64, count=len(proteins))
    lengths = residue_counts + 2
    # one byte per character: non-ASCII becomes '?', which maps to <unk>
    residue_bytes = np.frombuffer("".join(proteins).encode("ascii", "replace"), dtype=np.uint8)
    tokens = np.empty(int(lengths.sum()), dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    is_residue = np.ones(tokens.size, dtype=bool)
    is_residue[starts] = False
    is_residue[starts + lengths - 1] = False
    tokens[starts] = CLS_IDX
    tokens[starts + lengths - 1] = EOS_IDX
    tokens[is_residue] = _BYTE_TO_TOKEN[residue_bytes]
    return tokens, lengths.astype(np.int32)


def packed_inputs(tokens: np.ndarray, lengths: np.ndarray, pool_all_tokens: bool = False) -> dict:
    """Everything forward_packed needs besides tokens, vectorised (runs in DataLoader workers).

    pool_weight averages over residues (<cls>/<eos> excluded), or over every token
    of the sequence with pool_all_tokens=True (DNABERT-S style).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    num_seqs = lengths.size
    cu_seqlens = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu_seqlens[1:])
    seq_index = np.repeat(np.arange(num_seqs, dtype=np.int64), lengths)
    positions = np.arange(cu_seqlens[-1], dtype=np.int64) - np.repeat(cu_seqlens[:-1], lengths)
    seq_length = lengths[seq_index]
    if pool_all_tokens:
        pool_weight = (1.0 / seq_length).astype(np.float32)
    else:
        is_residue = (positions > 0) & (positions < seq_length - 1)
        pool_weight = np.where(is_residue, 1.0 / np.maximum(seq_length - 2, 1), 0.0).astype(np.float32)
    return {
        "tokens": np.asarray(tokens, dtype=np.int64),
        "positions": positions.astype(np.int32),
        "cu_seqlens": cu_seqlens.astype(np.int32),
        "max_seqlen": int(lengths.max()) if num_seqs else 0,
        "seq_index": seq_index.astype(np.int32),
        "pool_weight": pool_weight,
    }


def pad_packed(packed: dict, *, token_budget: int, max_seqs: int, max_seqlen: int) -> dict:
    """packed_inputs padded to fixed shapes: exactly `token_budget` tokens, `max_seqs` sequences, `max_seqlen`.

    Static shapes let torch.compile autotune one GEMM per shape and capture CUDA graphs. The filler
    tokens are <pad> in extra sequences of at most `max_seqlen` tokens (they attend only to each other)
    with pool weight 0; the sequence count is padded with empty sequences. forward_packed then returns
    `max_seqs` rows: the first len(packed["cu_seqlens"]) - 1 are the real ones."""
    tokens, cu = packed["tokens"], packed["cu_seqlens"]
    real_tokens, real_seqs = int(cu[-1]), cu.size - 1
    fill = token_budget - real_tokens
    filler = [max_seqlen] * (fill // max_seqlen) + ([fill % max_seqlen] if fill % max_seqlen else [])
    if fill < 0 or packed["max_seqlen"] > max_seqlen or real_seqs + len(filler) > max_seqs:
        raise ValueError(
            f"pack of {real_tokens} tokens / {real_seqs} sequences / longest {packed['max_seqlen']} "
            f"does not fit {token_budget} / {max_seqs} / {max_seqlen}"
        )
    filler_lengths = np.asarray(filler, dtype=np.int64)
    filler_inputs = packed_inputs(np.full(fill, PAD_IDX, dtype=np.int64), filler_lengths)
    empty = max_seqs - real_seqs - filler_lengths.size
    return {
        "tokens": np.concatenate([tokens, filler_inputs["tokens"]]).astype(np.int64),
        "positions": np.concatenate([packed["positions"], filler_inputs["positions"]]).astype(np.int32),
        "cu_seqlens": np.concatenate(
            [cu, cu[-1] + filler_inputs["cu_seqlens"][1:], np.full(empty, token_budget, dtype=np.int32)]
        ).astype(np.int32),
        "max_seqlen": max_seqlen,
        "seq_index": np.concatenate([packed["seq_index"], real_seqs + filler_inputs["seq_index"]]).astype(
            np.int32
        ),
        "pool_weight": np.concatenate([packed["pool_weight"], np.zeros(fill, dtype=np.float32)]).astype(
            np.float32
        ),
    }


def packed_to_torch(packed: dict, device="cpu") -> dict:
    """numpy packed_inputs -> torch tensors on `device` (max_seqlen stays a Python int)."""
    return {
        k: (v if isinstance(v, int) else torch.from_numpy(v).to(device, non_blocking=True))
        for k, v in packed.items()
    }


# ----------------------------------------------------------------------------
# model


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, dtype: torch.dtype):
    """cos/sin tables [..., head_dim] for integer positions, as fair-esm's RotaryEmbedding (fp32 math)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def _varlen_attn_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    return varlen_attn


@torch.library.custom_op("perfkit::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x @ weight.T + bias) in one call: on CUDA one cuBLASLt GEMM whose epilogue applies the tanh form of
    GELU (fair-esm uses the erf form; the gate judges the difference); on CPU an addmm and the erf form.
    An opaque op, so that torch.compile keeps the fused call instead of splitting it into a GEMM and a
    pointwise kernel."""
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("perfkit::add_linear_", mutates_args=("residual",))
def add_linear_(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """residual += x @ weight.T in one GEMM, in place: the residual is the GEMM's C (beta = 1), read in its
    epilogue, so the projection's output never makes a round trip through memory to a separate add (and, in
    place, no copy of C into a new output either). No bias: cuBLAS takes a bias vector or a C matrix, not
    both; the caller carries the bias (Block.forward_carried). Opaque to torch.compile, which would split it
    into a GEMM and an add fused downstream; inductor keeps the mutation in place."""
    residual.view(-1, residual.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]).to(weight.dtype), weight.t())


class Block(nn.Module):
    """Pre-LN transformer layer: x + attn(ln(x)), then x + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, config: ESM2Config):
        super().__init__()
        self.heads, self.head_dim = config.attention_heads, config.head_dim
        self.attn_norm = nn.LayerNorm(config.embed_dim)  # fair-esm: self_attn_layer_norm
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)  # fair-esm: q_proj|k_proj|v_proj
        self.out_proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.ffn_norm = nn.LayerNorm(config.embed_dim)  # fair-esm: final_layer_norm
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)
        self.gelu_epilogue = False  # fc1 + bias + GELU in one cuBLASLt call (tanh GELU: numerics differ)

    def attention(self, h, cos, sin, attend):
        # h: [..., T, D] (packed: [N, D]); cos/sin broadcast against q/k laid out as [..., T, H, hd]
        qkv = self.qkv(h).unflatten(-1, (3, self.heads, self.head_dim))
        q, k, v = qkv.unbind(-3)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return attend(q, k, v).flatten(-2)

    def hidden(self, h):
        if self.gelu_epilogue:
            # under autocast the norm's output is fp32; autocast does not reach into a custom op
            return linear_gelu_tanh(h.to(self.fc1.weight.dtype), self.fc1.weight, self.fc1.bias)
        return F.gelu(self.fc1(h))  # exact (erf) GELU, as fair-esm

    def forward(self, x, cos, sin, attend):
        x = x + self.out_proj(self.attention(self.attn_norm(x), cos, sin, attend))
        return x + self.fc2(self.hidden(self.ffn_norm(x)))

    def forward_carried(self, x, offset, cos, sin, attend):
        """The same layer on a stream held as x + offset (offset: one [D] vector, the projections' biases so
        far): out_proj and fc2 add their product to x in their GEMM's epilogue, in place (add_linear_), and
        their biases to the offset, which each norm adds back as it reads x. No separate residual-add kernel.
        x is overwritten: the caller passes a stream it no longer needs."""
        add_linear_(x, self.attention(self.attn_norm(x + offset), cos, sin, attend), self.out_proj.weight)
        offset = offset + self.out_proj.bias
        add_linear_(x, self.hidden(self.ffn_norm(x + offset)), self.fc2.weight)
        return x, offset + self.fc2.bias


class ESM2(nn.Module):
    def __init__(self, config: ESM2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_IDX)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.embed_dim)  # fair-esm: emb_layer_norm_after
        self.scale = config.head_dim**-0.5
        # which attention kernel really ran, one count per forward call
        self.attention_calls = {
            "varlen_attn": 0,
            "mem_efficient_varlen": 0,
            "flex_attention": 0,
            "sdpa_repadded": 0,
            "sdpa_padded": 0,
        }
        # packed path kernel: "auto" = varlen_attn on CUDA fp16/bf16, else sdpa_repadded; or name one
        self.packed_attention = "auto"
        self.blocks_compiled = False
        # the residual adds in out_proj's and fc2's GEMM epilogues (packed path)
        self.residual_epilogue = False
        self.run_layers = self._run_layers

    def compile_blocks(
        self, mode: str | None = None, dynamic: bool = True, whole_stack: bool = False
    ) -> "ESM2":
        """torch.compile each block (fuses norms, rotary, GELU, residuals); one graph for all blocks.

        dynamic=True: any token count, compiled once. dynamic=False with packs padded to fixed shapes
        (pad_packed) lets mode="max-autotune" pick GEMM kernels per shape and capture CUDA graphs.
        whole_stack: one graph over all layers, so a block's last residual add fuses with the next block's
        norm (longer compilation)."""
        if whole_stack:
            self.run_layers = torch.compile(self._run_layers, dynamic=dynamic, mode=mode)
        else:
            for layer in self.layers:
                layer.forward = torch.compile(layer.forward, dynamic=dynamic, mode=mode)
                layer.forward_carried = torch.compile(layer.forward_carried, dynamic=dynamic, mode=mode)
        self.blocks_compiled = True
        return self

    def _run_layers(self, x, cos, sin, attend):
        if self.residual_epilogue:
            offset = x.new_zeros(x.shape[-1])
            for layer in self.layers:
                x, offset = layer.forward_carried(x, offset, cos, sin, attend)
            return x + offset
        for layer in self.layers:
            x = layer(x, cos, sin, attend)
        return x

    def _packed_kernel(self, x) -> str:
        if self.packed_attention != "auto":
            return self.packed_attention
        half_on_cuda = x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
        return "varlen_attn" if half_on_cuda and _varlen_attn_fn() is not None else "sdpa_repadded"

    def embed(self, tokens, mask_ratio):
        """Token embedding with fair-esm's inference-time token-dropout rescale."""
        x = self.embed_tokens(tokens)
        if self.config.token_dropout:
            x = x.masked_fill((tokens == MASK_IDX).unsqueeze(-1), 0.0)
            x = x * (1 - 0.15 * 0.8) / (1 - mask_ratio).to(x.dtype).unsqueeze(-1)  # 0.88 without <mask>
        return x

    @torch.inference_mode()
    def forward_padded(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (<cls> .. <eos> <pad>..) -> pooled [B, D] float32 (mean over residues)."""
        is_pad = tokens == PAD_IDX
        lengths = (~is_pad).sum(-1)
        mask_ratio = (tokens == MASK_IDX).sum(-1).float() / lengths
        x = self.embed(tokens, mask_ratio[:, None])
        x = x * (~is_pad).unsqueeze(-1).to(x.dtype)  # zero pads, as fair-esm

        positions = torch.arange(tokens.shape[1], device=tokens.device)
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, x.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, hd] against [B, T, H, hd]
        key_mask = (~is_pad)[:, None, None, :]  # [B, 1, 1, T], True = attend

        def attend(q, k, v):  # [B, T, H, hd] -> [B, T, H, hd]
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=self.scale)
            return out.transpose(1, 2)

        for layer in self.layers:
            x = layer(x, cos, sin, attend)
        x = self.final_norm(x)
        self.attention_calls["sdpa_padded"] += 1

        residue_positions = positions[None, :]
        is_residue = (residue_positions > 0) & (residue_positions < (lengths - 1)[:, None])
        weights = is_residue.float() / (lengths - 2).clamp(min=1)[:, None].float()
        return torch.einsum("btd,bt->bd", x.float(), weights)

    @torch.inference_mode()
    def forward_packed(
        self, tokens, positions, cu_seqlens, max_seqlen, seq_index, pool_weight, return_hidden=False
    ):
        """Packed tokens [N] -> pooled [B, D] float32 (and hidden [N, D] if return_hidden).

        varlen_attn: torch.nn.attention.varlen.varlen_attn (FlashAttention varlen), CUDA fp16/bf16.
        mem_efficient_varlen: the cutlass memory-efficient kernel with cu_seqlens, CUDA.
        flex: flex_attention under a same-sequence block mask.
        sdpa_repadded: scatter into a padded [B, max_seqlen] view, one masked SDPA, gather back.
        """
        num_seqs = cu_seqlens.numel() - 1
        seq_index = seq_index.long()
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        mask_counts = torch.zeros(num_seqs, device=tokens.device).index_add_(
            0, seq_index, (tokens == MASK_IDX).float()
        )
        x = self.embed(tokens, (mask_counts / lengths)[seq_index])

        cos, sin = rotary_cos_sin(positions, self.config.head_dim, x.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]  # [N, 1, hd] against [N, H, hd]

        kernel = self._packed_kernel(x)
        if kernel == "varlen_attn":
            varlen_attn, cu = _varlen_attn_fn(), cu_seqlens.to(torch.int32)

            def attend(q, k, v):  # [N, H, hd]
                return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=self.scale)
        elif kernel == "mem_efficient_varlen":
            cu = cu_seqlens.to(torch.int32)

            def attend(q, k, v):  # [N, H, hd]; the cutlass kernel tiles 64 queries, flash's varlen 128
                out = torch.ops.aten._efficient_attention_forward(
                    q[None],
                    k[None],
                    v[None],
                    None,
                    cu,
                    cu,
                    max_seqlen,
                    max_seqlen,
                    0.0,
                    0,
                    False,
                    scale=self.scale,
                )
                return out[0][0]
        elif kernel == "flex":
            block_mask = flex_block_mask(seq_index, cu_seqlens)

            def attend(q, k, v):  # [N, H, hd]
                return flex_packed_attention(
                    q,
                    k,
                    v,
                    block_mask,
                    scale=self.scale,
                    compiled=x.is_cuda,
                    inside_compiled=self.blocks_compiled,
                )
        elif kernel == "sdpa_repadded":
            slot = seq_index * max_seqlen + positions.long()  # row in the padded [B*T] view
            key_mask = (torch.arange(max_seqlen, device=x.device)[None, :] < lengths[:, None])[
                :, None, None, :
            ]

            def attend(q, k, v):  # [N, H, hd] -> padded [B, H, T, hd] -> SDPA -> [N, H, hd]
                return repadded_attention(
                    q,
                    k,
                    v,
                    slot=slot,
                    num_seqs=num_seqs,
                    max_seqlen=max_seqlen,
                    mask=key_mask,
                    scale=self.scale,
                )
        else:
            raise UserError(
                f"unknown packed attention {kernel!r}",
                "use 'auto', 'varlen_attn', 'mem_efficient_varlen', 'flex' or 'sdpa_repadded'",
            )
        self.attention_calls["flex_attention" if kernel == "flex" else kernel] += 1

        x = self.final_norm(self.run_layers(x, cos, sin, attend))

        pooled = pool_segments(x, pool_weight, seq_index, num_seqs)
        return (pooled, x) if return_hidden else pooled


# ----------------------------------------------------------------------------
# weights


@torch.no_grad()
def init_random_(model: ESM2, seed: int) -> ESM2:
    """Realistic-scale random weights: Linear/Embedding ~ N(0, 0.02), biases 0, LayerNorm 1/0."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    return init_normal_(model, gen)


PACKED_ATTENTION = ("auto", "varlen_attn", "mem_efficient_varlen", "flex", "sdpa_repadded")


def set_kernels(
    model: ESM2, *, attention: str = "auto", gelu_epilogue: bool = False, residual_epilogue: bool = False
) -> ESM2:
    """Which kernels the packed path runs: the attention kernel, fc1 + bias + GELU as one cuBLASLt call, and
    the residual adds inside out_proj's and fc2's GEMMs."""
    if attention not in PACKED_ATTENTION:
        raise UserError(
            f"unknown packed attention {attention!r}", f"use one of {', '.join(PACKED_ATTENTION)}"
        )
    model.packed_attention = attention
    model.residual_epilogue = residual_epilogue
    for layer in model.layers:
        layer.gelu_epilogue = gelu_epilogue
    return model


def to_float8(model: ESM2) -> ESM2:
    """Every block's Linear layers to FP8 (e4m3) matmuls with row-wise scales: activations scaled per token
    at run time, weights per output channel once (torchao). Norms, attention and pooling stay bf16/fp32."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise UserError(
            f"precision fp8 needs torchao ({exc})", "pip install torchao, or use precision bf16"
        ) from None
    quantize_(
        model.layers,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda module, name: isinstance(module, nn.Linear),
    )
    return model


def build_model(name: str, weights=None, seed: int = 0, device="cpu", dtype=torch.float32):
    """-> (ESM2 in eval mode on `device`/`dtype`, weights_info dict).

    weights: None (seeded random init), a fair-esm .pt checkpoint, or a HuggingFace folder.
    """
    config = get_config(name)
    model = empty_model_on(lambda: ESM2(config), device, dtype)

    if weights is None:
        init_random_(model, seed)
        return model, {"source": "random", "seed": seed}

    path = Path(weights).expanduser()
    if not path.exists():
        raise UserError(
            f"weights path {path} does not exist", "pass a fair-esm .pt file, a HF folder, or no weights"
        )
    if path.is_dir():
        hf_state, files = esm2_weights.read_hf_folder(path, config)
        esm2_weights.load_fairesm_state_dict(model, esm2_weights.hf_to_fairesm_names(hf_state))
        return model, {"source": "huggingface", "path": str(path), "sha256": esm2_weights.file_sha256(files)}
    esm2_weights.load_fairesm_state_dict(model, esm2_weights.read_fairesm_checkpoint(path, config))
    return model, {"source": "fair-esm", "path": str(path), "sha256": esm2_weights.file_sha256([path])}
