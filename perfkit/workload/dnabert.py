"""DNABERT-S in one file: config, BPE tokeniser, packed inputs, model (its weight files: dnabert_weights.py).

DNABERT-S (zhihan1996/DNABERT-S) is DNABERT-2-117M fine-tuned for species-aware
embeddings; both use the MosaicBERT layout of DNABERT-2's bert_layers.py:
  embeddings   word + token-type(0) embedding, LayerNorm; no position embeddings
  attention    fused qkv, ALiBi bias -slope_h * |i - j| on the scores
  FFN          gated linear unit: gelu(x W_gate) * (x W_up), then W_out
  norms        post-LN as BERT: x = LN(x + attn(x)), x = LN(x + ffn(x)); no final norm
The sequence embedding is the mean of the last hidden state over every token of
the sequence, [CLS] and [SEP] included (as the DNABERT-2 / DNABERT-S model cards do).

Inputs come in two shapes, as in esm2.py:
  padded  tokens [B, T]   [CLS] bpe tokens [SEP] [PAD]...
  packed  tokens [N]      sequences back to back, described by cu_seqlens [B+1].
Both return pooled [B, D] float32.

Packed attention: torch's varlen_attn (FlashAttention varlen) takes no ALiBi
slopes or bias, so on CUDA fp16/bf16 the packed path runs flex_attention
(compiled) with an ALiBi score_mod and a same-sequence block mask; elsewhere it
re-pads into [B, max_seqlen] and runs SDPA with the bias as an additive mask.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from perfkit.errors import UserError
from perfkit.workload import esm2, esm2_weights
from perfkit.workload.dnabert_weights import load_dnabert2_state_dict, read_weights
from perfkit.workload.layers import (
    empty_model_on,
    flex_block_mask,
    flex_packed_attention,
    init_normal_,
    pool_segments,
    repadded_attention,
)
from perfkit.workload.equivalence import PRECISIONS, batches_by_tokens, compare_embeddings, gate, true_fp32

# ----------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class DNABERTConfig:
    name: str = "dnabert_s"
    num_layers: int = 12
    embed_dim: int = 768
    attention_heads: int = 12
    ffn_dim: int = 3072  # GLU width: the input projection is 2 * ffn_dim wide (gate | up)
    vocab_size: int = 4096
    layer_norm_eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads


DNABERT_S = DNABERTConfig()
# a 2-layer, 128-wide model of the same architecture and tokenizer: the nucleotide stage of CPU smoke runs and
# tests in seconds rather than minutes (`--nt-model dnabert_mini`); its numbers say nothing of DNABERT-S's speed
DNABERT_MINI = DNABERTConfig(name="dnabert_mini", num_layers=2, embed_dim=128, attention_heads=4, ffn_dim=512)
CONFIGS = {config.name: config for config in (DNABERT_S, DNABERT_MINI)}


def flops_per_token(config: DNABERTConfig, seq_len: int | None = None) -> float:
    """Matmul FLOPs of one forward, per token (same convention as esm2.flops_per_token).

    2 FLOPs per multiply-add of every Linear: qkv 3d^2, out d^2, GLU in 2*d*f, out f*d.
    seq_len=T adds QK^T and AV (2*2*T*d per layer, full bidirectional attention).
    """
    d, f, layers = config.embed_dim, config.ffn_dim, config.num_layers
    flops = 2 * layers * (4 * d * d + 3 * d * f)
    if seq_len is not None:
        flops += layers * 4 * seq_len * d
    return float(flops)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes as the ALiBi paper and MosaicBERT make them.

    A power of two n gives the geometric sequence 2^(-8k/n), k = 1..n. Otherwise take
    that sequence for the nearest lower power of two p, then every other slope of the
    2p sequence for the remaining heads (12 heads: 2^-1..2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5).
    """

    def geometric(n):
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]

    if math.log2(num_heads).is_integer():
        return geometric(num_heads)
    p = 2 ** math.floor(math.log2(num_heads))
    return geometric(p) + alibi_slopes(2 * p)[0::2][: num_heads - p]


# ----------------------------------------------------------------------------
# tokeniser: byte-pair encoding with a 4096 vocabulary, as DNABERT-2

SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
PAD_ID = SPECIAL_TOKENS.index("[PAD]")  # 3, in our trained tokeniser
# the training sample for our stand-in tokeniser (change any of these -> new cache file)
TRAINING_READS, TRAINING_PROFILE, TRAINING_SEED = 5_000, "reads150", 0


def train_tokenizer(n_reads: int = TRAINING_READS, seed: int = TRAINING_SEED, vocab_size: int = 4096):
    """BPE tokeniser trained on synthetic viral-like reads; same arguments -> same tokeniser."""
    from tokenizers import Tokenizer, models, trainers

    from perfkit.workload.fasta import read_fasta
    from perfkit.workload.synth import write_synthetic_fasta

    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "train.fa"
        write_synthetic_fasta(fasta, n_reads, TRAINING_PROFILE, seed=seed)
        reads = [seq for _, seq in read_fasta(fasta)]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list("ACGTN"),
        show_progress=False,
    )
    tokenizer.train_from_iterator(reads, trainer)
    return tokenizer


def cache_dir() -> Path:
    """$PERFKIT_CACHE_DIR, else $XDG_CACHE_HOME/perfkit, else ~/.cache/perfkit."""
    if os.environ.get("PERFKIT_CACHE_DIR"):
        return Path(os.environ["PERFKIT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "perfkit"


def special_token_ids(tokenizer) -> dict:
    """{'cls': id, 'sep': id, 'pad': id}; UserError if the tokeniser lacks one."""
    ids = {name: tokenizer.token_to_id(f"[{name.upper()}]") for name in ("cls", "sep", "pad")}
    missing = [f"[{name.upper()}]" for name, i in ids.items() if i is None]
    if missing:
        raise UserError(
            f"tokenizer has no {', '.join(missing)} token", "pass a DNABERT-2 / DNABERT-S tokenizer.json"
        )
    return ids


def load_tokenizer(path=None, vocab_size: int = DNABERT_S.vocab_size):
    """A tokenizers.Tokenizer: from `path` (e.g. DNABERT-S's tokenizer.json), else our cached stand-in."""
    from tokenizers import Tokenizer

    if path is not None:
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # missing file, not JSON, not a tokenizer
            raise UserError(
                f"cannot read tokenizer {path}: {exc}", "pass a tokenizer.json saved by HF tokenizers"
            ) from exc
    else:
        tokenizer = _default_tokenizer()
    special_token_ids(tokenizer)
    if tokenizer.get_vocab_size() > vocab_size:
        raise UserError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model embeds {vocab_size}",
            "pass the tokenizer that belongs to the weights",
        )
    return tokenizer


@functools.cache
def _default_tokenizer():
    """Our stand-in, trained once and kept in cache_dir() (trained in memory if that is not writable)."""
    from tokenizers import Tokenizer

    recipe = f"bpe{DNABERT_S.vocab_size}_{TRAINING_PROFILE}_n{TRAINING_READS}_s{TRAINING_SEED}"
    cached = cache_dir() / f"dnabert_{recipe}.json"
    if cached.exists():
        try:
            return Tokenizer.from_file(str(cached))
        except Exception:
            pass  # a damaged cache file: train again and overwrite it
    tokenizer = train_tokenizer()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tokenizer.save(str(tmp))
        os.replace(tmp, cached)
    except OSError:
        pass  # read-only home: fine, we keep it in memory
    return tokenizer


def encode_nucleotides(tokenizer, seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """DNA strings -> (flat int64 tokens, [CLS] bpe.. [SEP] per sequence; int32 lengths incl. both)."""
    ids = special_token_ids(tokenizer)
    encodings = tokenizer.encode_batch(list(seqs), add_special_tokens=False)
    bpe_counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    bpe_tokens = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
    lengths = bpe_counts + 2
    starts = np.cumsum(lengths) - lengths
    tokens = np.empty(int(lengths.sum()), dtype=np.int64)
    is_bpe = np.ones(tokens.size, dtype=bool)
    is_bpe[starts] = is_bpe[starts + lengths - 1] = False
    tokens[starts] = ids["cls"]
    tokens[starts + lengths - 1] = ids["sep"]
    tokens[is_bpe] = bpe_tokens
    return tokens, lengths.astype(np.int32)


def tokens_per_base(tokenizer, seqs: list[str]) -> float:
    """BPE tokens per nucleotide over `seqs` ([CLS]/[SEP] not counted)."""
    encodings = tokenizer.encode_batch(list(seqs), add_special_tokens=False)
    return sum(len(e.ids) for e in encodings) / max(sum(len(s) for s in seqs), 1)


def packed_inputs_nt(tokens: np.ndarray, lengths: np.ndarray) -> dict:
    """esm2.packed_inputs with pool_weight over every token of a sequence ([CLS]/[SEP] included)."""
    return esm2.packed_inputs(tokens, lengths, pool_all_tokens=True)


packed_to_torch = esm2.packed_to_torch


def pad_batch(tokens: np.ndarray, lengths: np.ndarray, pad_id: int = PAD_ID) -> np.ndarray:
    """Flat tokens + lengths -> padded [B, max_len] int64, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    padded = np.full((lengths.size, int(lengths.max()) if lengths.size else 0), pad_id, dtype=np.int64)
    padded[np.arange(padded.shape[1])[None, :] < lengths[:, None]] = tokens  # row-major fill = packed order
    return padded


# ----------------------------------------------------------------------------
# model


def alibi_mask(slopes: torch.Tensor, key_is_real: torch.Tensor, dtype) -> torch.Tensor:
    """Additive attention mask [B, H, T, T]: -slope_h * |i - j|, and -inf on padding keys."""
    positions = torch.arange(key_is_real.shape[-1], device=key_is_real.device)
    distance = (positions[:, None] - positions[None, :]).abs()
    bias = -slopes.float()[None, :, None, None] * distance  # [1, H, T, T]
    bias = bias.masked_fill(~key_is_real[:, None, None, :], float("-inf"))
    return bias.to(dtype)


def flex_alibi_attention(q, k, v, slopes, block_mask, compiled: bool, inside_compiled: bool = False):
    """Packed [N, H, hd] attention with ALiBi under `block_mask` (see flex_block_mask).

    `inside_compiled`: the caller is itself compiled (compiled blocks), which compiles flex with it."""

    def alibi(score, b, h, q_idx, kv_idx):
        # within one sequence the packed index distance is the position distance
        return score - slopes[h] * (q_idx - kv_idx).abs()

    return flex_packed_attention(
        q, k, v, block_mask, score_mod=alibi, compiled=compiled, inside_compiled=inside_compiled
    )


class Block(nn.Module):
    """Post-LN MosaicBERT layer: x = LN(x + attn(x)), then x = LN(x + W_out(gelu(gate) * up))."""

    def __init__(self, config: DNABERTConfig):
        super().__init__()
        self.heads, self.head_dim = config.attention_heads, config.head_dim
        d, eps = config.embed_dim, config.layer_norm_eps
        self.qkv = nn.Linear(d, 3 * d)  # DNABERT-2: attention.self.Wqkv
        self.out_proj = nn.Linear(d, d)  # attention.output.dense
        self.attn_norm = nn.LayerNorm(d, eps=eps)  # attention.output.LayerNorm
        self.ffn_in = nn.Linear(d, 2 * config.ffn_dim, bias=False)  # mlp.gated_layers: [gate | up]
        self.ffn_out = nn.Linear(config.ffn_dim, d)  # mlp.wo
        self.ffn_norm = nn.LayerNorm(d, eps=eps)  # mlp.layernorm

    def forward(self, x, attend):
        # x: [..., T, D] (packed: [N, D]); attend takes and returns [..., T, H, hd]
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)
        x = self.attn_norm(x + self.out_proj(attend(q, k, v).flatten(-2)))
        gate, up = self.ffn_in(x).chunk(2, dim=-1)
        return self.ffn_norm(x + self.ffn_out(F.gelu(gate) * up))  # exact (erf) GELU


class DNABERT(nn.Module):
    def __init__(self, config: DNABERTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        # BERT's token-type table, row 0 only: every token is of type 0
        self.token_type_embedding = nn.Parameter(torch.empty(config.embed_dim))
        self.embed_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.slopes = alibi_slopes(config.attention_heads)
        # one fp32 tensor per device, made once: a list made into a tensor every forward is a host->device
        # copy that synced the stream every batch (not a buffer: meta init and .to(dtype) would spoil it)
        self._slopes_on: dict[torch.device, torch.Tensor] = {}
        self.blocks_compiled = False
        # packed path kernel: "auto" = flex when the hidden states are fp16/bf16 on CUDA (a model cast to half
        # precision), else sdpa_repadded (runs use autocast, which keeps LayerNorm outputs fp32: sdpa_repadded)
        self.packed_attention = "auto"
        # which attention kernel really ran, one count per forward call
        self.attention_calls = {"flex_attention": 0, "sdpa_repadded": 0, "sdpa_padded": 0}

    def embed(self, tokens):
        return self.embed_norm(self.token_embedding(tokens) + self.token_type_embedding)

    def compile_blocks(self) -> "DNABERT":
        """torch.compile each layer (fuses norms, GELU gate, residuals, and flex attention with them);
        dynamic token counts, compiled once."""
        for layer in self.layers:
            layer.forward = torch.compile(layer.forward, dynamic=True)
        self.blocks_compiled = True
        return self

    def slopes_on(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._slopes_on:
            self._slopes_on[device] = torch.tensor(self.slopes, dtype=torch.float32, device=device)
        return self._slopes_on[device]

    @torch.inference_mode()
    def forward_padded(self, tokens: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
        """tokens [B, T] ([CLS] .. [SEP] [PAD]..) -> pooled [B, D] float32 (mean over all real tokens)."""
        is_real = tokens != pad_id
        x = self.embed(tokens)
        mask = alibi_mask(self.slopes_on(x.device), is_real, x.dtype)

        def attend(q, k, v):  # [B, T, H, hd] -> [B, T, H, hd]
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)

        for layer in self.layers:
            x = layer(x, attend)
        self.attention_calls["sdpa_padded"] += 1

        weights = is_real.float() / is_real.sum(-1, keepdim=True).clamp(min=1).float()
        return torch.einsum("btd,bt->bd", x.float(), weights)

    def _packed_kernel(self, x) -> str:
        if self.packed_attention != "auto":
            return self.packed_attention
        return "flex" if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) else "sdpa_repadded"

    @torch.inference_mode()
    def forward_packed(
        self, tokens, positions, cu_seqlens, max_seqlen, seq_index, pool_weight, return_hidden=False
    ):
        """Packed tokens [N] -> pooled [B, D] float32 (and hidden [N, D] if return_hidden).

        flex: flex_attention, ALiBi score_mod + same-sequence block mask (compiled on CUDA, eager elsewhere).
        sdpa_repadded: scatter into a padded [B, max_seqlen] view, one SDPA with the ALiBi mask, gather back.
        """
        num_seqs = cu_seqlens.numel() - 1
        seq_index = seq_index.long()
        x = self.embed(tokens)
        slopes = self.slopes_on(x.device)

        kernel = self._packed_kernel(x)
        if kernel == "flex":
            block_mask = flex_block_mask(seq_index, cu_seqlens)

            def attend(q, k, v):  # [N, H, hd]
                return flex_alibi_attention(
                    q, k, v, slopes, block_mask, compiled=x.is_cuda, inside_compiled=self.blocks_compiled
                )

            self.attention_calls["flex_attention"] += 1
        elif kernel == "sdpa_repadded":
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
            slot = seq_index * max_seqlen + positions.long()  # row in the padded [B*T] view
            key_is_real = torch.arange(max_seqlen, device=x.device)[None, :] < lengths[:, None]
            mask = alibi_mask(slopes, key_is_real, x.dtype)

            def attend(q, k, v):  # [N, H, hd] -> padded [B, H, T, hd] -> SDPA -> [N, H, hd]
                return repadded_attention(
                    q, k, v, slot=slot, num_seqs=num_seqs, max_seqlen=max_seqlen, mask=mask
                )

            self.attention_calls["sdpa_repadded"] += 1
        else:
            raise UserError(f"unknown packed attention {kernel!r}", "use 'auto', 'flex' or 'sdpa_repadded'")

        for layer in self.layers:
            x = layer(x, attend)

        pooled = pool_segments(x, pool_weight, seq_index, num_seqs)
        return (pooled, x) if return_hidden else pooled


# ----------------------------------------------------------------------------
# weights


@torch.no_grad()
def init_random_(model: DNABERT, seed: int) -> DNABERT:
    """Linear/Embedding weights and the token-type vector ~ N(0, 0.02), biases 0, LayerNorm 1/0."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    model.token_type_embedding.normal_(0.0, 0.02, generator=gen)
    return init_normal_(model, gen)


def build_model(
    weights=None, seed: int = 0, device="cpu", dtype=torch.float32, config: DNABERTConfig = DNABERT_S
):
    """-> (DNABERT in eval mode on `device`/`dtype`, weights_info dict).

    weights: None (seeded random init), a HuggingFace folder of DNABERT-S / DNABERT-2-117M, or one
    .safetensors / .bin file in DNABERT-2's tensor names.
    The name mapping follows DNABERT-2's public bert_layers.py; outputs have not been compared
    with that reference implementation (no weights or network here), so info says so.
    """
    model = empty_model_on(lambda: DNABERT(config), device, dtype)

    if weights is None:
        init_random_(model, seed)
        return model, {"source": "random", "seed": seed}

    path = Path(weights).expanduser()
    state_dict, file = read_weights(path, config)
    load_dnabert2_state_dict(model, state_dict)
    return model, {
        "source": "huggingface" if path.is_dir() else f"{file.suffix.lstrip('.')} file",
        "path": str(path),
        "sha256": esm2_weights.file_sha256([file]),
        "checked_against_reference": False,
    }


# ----------------------------------------------------------------------------
# equivalence: packed path (precision, device) against the padded path (fp32) of the same model


def default_reads(n: int = 64, seed: int = 0, min_len: int = 60, max_len: int = 300) -> list[str]:
    """Seeded random DNA reads over ACGT with a few N's."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACGTN"))
    weights = [0.249, 0.249, 0.249, 0.249, 0.004]
    return [
        "".join(rng.choice(letters, size=int(rng.integers(min_len, max_len + 1)), p=weights))
        for _ in range(n)
    ]


def run_nt_equivalence(
    device: str = "cpu",
    precision: str = "fp32",
    n: int = 64,
    seed: int = 0,
    config: DNABERTConfig = DNABERT_S,
    tokenizer=None,
    packed_attention: str = "auto",
    token_budget: int = 8192,
    compile: bool = False,
) -> dict:
    """Padded fp32 SDPA (reference) vs packed path at `precision`, same seeded weights, same device.
    `compile`: the packed path through compiled blocks, as a `compile: true` run takes it (CUDA only)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    tokenizer = load_tokenizer() if tokenizer is None else tokenizer
    pad_id = special_token_ids(tokenizer)["pad"]
    reads = default_reads(n=n, seed=seed)
    tokens, lengths = encode_nucleotides(tokenizer, reads)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    batches = batches_by_tokens(lengths.tolist(), token_budget)

    def spans(batch):
        return tokens[starts[batch[0]] : starts[batch[-1] + 1]], lengths[batch[0] : batch[-1] + 1]

    model, _ = build_model(seed=seed, device=device, dtype=torch.float32, config=config)
    with true_fp32():
        reference = np.concatenate(
            [
                model.forward_padded(torch.from_numpy(pad_batch(*spans(b), pad_id)).to(device), pad_id)
                .cpu()
                .numpy()
                for b in batches
            ]
        )

    model.to(PRECISIONS[precision])
    model.packed_attention = packed_attention
    compiled = bool(compile and torch.device(device).type == "cuda")
    if compiled:
        model.compile_blocks()
    candidate = np.concatenate(
        [
            model.forward_packed(**packed_to_torch(packed_inputs_nt(*spans(b)), device)).cpu().numpy()
            for b in batches
        ]
    )

    result = gate(compare_embeddings(reference, candidate), precision)
    packed_calls = {k: v for k, v in model.attention_calls.items() if k != "sdpa_padded"}
    result.update(
        {
            "model_name": config.name,
            "device": str(device),
            "num_reads": len(reads),
            "num_tokens": int(lengths.sum()),
            "tokens_per_base": tokens_per_base(tokenizer, reads),
            "seed": seed,
            "attention_calls": dict(model.attention_calls),
            "attention_path": max(packed_calls, key=packed_calls.get),
            "compiled": compiled,
        }
    )
    return result
