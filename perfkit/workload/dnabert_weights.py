"""DNABERT-S weights from a DNABERT-2-style HuggingFace folder or a state-dict file (bert_layers.py names),
mapped onto dnabert.DNABERT's parameter names, and back (for tests and for writing a folder users can
load). Kept apart from the model so that dnabert.py reads as the model and its tokeniser, as esm2.py does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from perfkit.errors import UserError

if TYPE_CHECKING:
    from perfkit.workload.dnabert import DNABERT, DNABERTConfig


# ours <- DNABERT-2 bert_layers.py names (BertModel; BertForMaskedLM adds a "bert." prefix)
_LAYER_NAMES = [
    ("qkv", "attention.self.Wqkv"),
    ("out_proj", "attention.output.dense"),
    ("attn_norm", "attention.output.LayerNorm"),
    ("ffn_in", "mlp.gated_layers"),
    ("ffn_out", "mlp.wo"),
    ("ffn_norm", "mlp.layernorm"),
]


_GLOBAL_NAMES = [
    ("token_embedding.weight", "embeddings.word_embeddings.weight"),
    ("embed_norm.weight", "embeddings.LayerNorm.weight"),
    ("embed_norm.bias", "embeddings.LayerNorm.bias"),
]


_TOKEN_TYPE_NAME = "embeddings.token_type_embeddings.weight"


_IGNORED = ("pooler.", "cls.", "embeddings.token_type_ids", "embeddings.position_ids")


def dnabert2_to_our_names(state_dict: dict) -> dict:
    """DNABERT-2 / DNABERT-S state dict (BertModel or BertForMaskedLM) -> our names."""
    layer_map = {theirs: ours for ours, theirs in _LAYER_NAMES}
    global_map = {theirs: ours for ours, theirs in _GLOBAL_NAMES}
    out = {}
    for name, tensor in state_dict.items():
        bare = name.removeprefix("bert.")
        for legacy, modern in ((".gamma", ".weight"), (".beta", ".bias")):  # old LayerNorm names
            if bare.endswith(legacy):
                bare = bare.removesuffix(legacy) + modern
        if bare.startswith(_IGNORED):
            continue
        if bare == _TOKEN_TYPE_NAME:
            out["token_type_embedding"] = tensor[0]
        elif bare in global_map:
            out[global_map[bare]] = tensor
        elif bare.startswith("encoder.layer.") and bare.count(".") >= 4:
            index, rest = bare.removeprefix("encoder.layer.").split(".", 1)
            module, part = rest.rsplit(".", 1)
            if module not in layer_map:
                raise UserError(
                    f"unexpected tensor {name!r} in DNABERT-2 weights", "pass a DNABERT-S checkpoint"
                )
            out[f"layers.{index}.{layer_map[module]}.{part}"] = tensor
        else:
            raise UserError(f"unexpected tensor {name!r} in DNABERT-2 weights", "pass a DNABERT-S checkpoint")
    return out


def our_to_dnabert2_names(state_dict: dict) -> dict:
    """Inverse of dnabert2_to_our_names, BertModel layout (for tests and export)."""
    layer_map = dict(_LAYER_NAMES)
    global_map = dict(_GLOBAL_NAMES)
    out = {}
    for name, tensor in state_dict.items():
        if name == "token_type_embedding":
            out[_TOKEN_TYPE_NAME] = torch.stack([tensor, torch.zeros_like(tensor)])
        elif name in global_map:
            out[global_map[name]] = tensor
        else:
            _, index, module, part = name.split(".")
            out[f"encoder.layer.{index}.{layer_map[module]}.{part}"] = tensor
    return out


def load_dnabert2_state_dict(model: DNABERT, state_dict: dict) -> DNABERT:
    """Copy DNABERT-2-named weights into `model`; UserError on missing, extra or misshapen tensors."""
    ours = dnabert2_to_our_names(state_dict)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"weights do not fit a DNABERT of {model.config.num_layers} layers, width {model.config.embed_dim}: {exc}",
            "pass a DNABERT-2-117M / DNABERT-S checkpoint",
        ) from exc
    return model


def _read_hf_folder(folder: Path, config: DNABERTConfig) -> tuple[dict, Path]:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise UserError(f"{folder} has no config.json", "pass a HuggingFace DNABERT-S / DNABERT-2 folder")
    hf = json.loads(config_path.read_text())
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    found = tuple(hf.get(k) for k in keys)
    expected = (
        config.num_layers,
        config.embed_dim,
        config.attention_heads,
        config.ffn_dim,
        config.vocab_size,
    )
    if any(f is not None and f != e for f, e in zip(found, expected)):
        raise UserError(
            f"{folder} holds {dict(zip(keys, found))}, expected {expected}", "pass DNABERT-S weights"
        )
    if (folder / "model.safetensors").exists():
        try:
            from safetensors.torch import load_file
        except ImportError:
            load_file = None
        if load_file is not None:
            return load_file(str(folder / "model.safetensors")), folder / "model.safetensors"
    bin_path = folder / "pytorch_model.bin"
    if not bin_path.exists():
        raise UserError(
            f"{folder} has no model.safetensors or pytorch_model.bin", "pass a complete DNABERT-S folder"
        )
    return torch.load(bin_path, map_location="cpu", weights_only=True), bin_path


def read_weights(path: Path, config: DNABERTConfig) -> tuple[dict, Path]:
    """A HuggingFace folder (config.json checked), or one .safetensors / .bin file of DNABERT-2 tensor names."""
    if path.is_dir():
        return _read_hf_folder(path, config)
    if not path.exists():
        raise UserError(
            f"nucleotide weights {path} do not exist",
            "pass a DNABERT-S HuggingFace folder, a .safetensors or a .bin file",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), path
    if path.suffix in (".bin", ".pt", ".pth"):
        return torch.load(path, map_location="cpu", weights_only=True), path
    raise UserError(
        f"nucleotide weights {path}: unknown file type {path.suffix or '(none)'}",
        "pass a HuggingFace folder, a .safetensors or a .bin file",
    )
