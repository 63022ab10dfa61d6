"""ESM-2 weights from the two formats users have, fair-esm checkpoints and HuggingFace folders, mapped onto
esm2.ESM2's parameter names (one fused qkv per layer), and back (for the fair-esm reference in gates and
benchmarks). Kept apart from the model so that esm2.py reads as the model alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from perfkit.errors import UserError

if TYPE_CHECKING:
    from perfkit.workload.esm2 import ESM2, ESM2Config


_FAIRESM_IGNORED_PREFIXES = ("lm_head.", "contact_head.")


def load_fairesm_state_dict(model: ESM2, state_dict: dict) -> ESM2:
    """Copy a fair-esm ESM2 state dict (layers.0.self_attn.q_proj.weight, ...) into `model`."""
    sd = {}
    for name, tensor in state_dict.items():
        for prefix in ("encoder.sentence_encoder.", "encoder."):  # raw checkpoint prefixes
            name = name.removeprefix(prefix)
        if name.startswith(_FAIRESM_IGNORED_PREFIXES) or name.endswith("rot_emb.inv_freq"):
            continue
        sd[name] = tensor

    def pop(src):
        if src not in sd:
            raise UserError(f"fair-esm weights lack {src!r}", "pass an ESM-2 checkpoint (esm2_t*_UR50D.pt)")
        return sd.pop(src)

    ours = {"embed_tokens.weight": pop("embed_tokens.weight")}
    for part in ("weight", "bias"):
        ours[f"final_norm.{part}"] = pop(f"emb_layer_norm_after.{part}")
        for i in range(model.config.num_layers):
            src, dst = f"layers.{i}.", f"layers.{i}."
            qkv = [pop(f"{src}self_attn.{proj}.{part}") for proj in ("q_proj", "k_proj", "v_proj")]
            ours[f"{dst}qkv.{part}"] = torch.cat(qkv, dim=0)
            ours[f"{dst}out_proj.{part}"] = pop(f"{src}self_attn.out_proj.{part}")
            ours[f"{dst}attn_norm.{part}"] = pop(f"{src}self_attn_layer_norm.{part}")
            ours[f"{dst}ffn_norm.{part}"] = pop(f"{src}final_layer_norm.{part}")
            ours[f"{dst}fc1.{part}"] = pop(f"{src}fc1.{part}")
            ours[f"{dst}fc2.{part}"] = pop(f"{src}fc2.{part}")
    if sd:
        raise UserError(
            f"weights hold {len(sd)} tensors an ESM-2 of {model.config.num_layers} layers does not use, "
            f"e.g. {sorted(sd)[:3]}",
            "check that the checkpoint is ESM-2 (not ESM-1b/ESM-1v) and matches the model name",
        )
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as exc:  # shape mismatch: other width than the model name says
        raise UserError(
            f"weights do not fit {model.config.name}: {exc}", "pass the matching model name"
        ) from exc
    return model


def fairesm_state_dict(model: ESM2) -> dict:
    """Our weights under fair-esm's names (the inverse of load_fairesm_state_dict; qkv split in three)."""
    ours, out = model.state_dict(), {"embed_tokens.weight": model.state_dict()["embed_tokens.weight"]}
    for part in ("weight", "bias"):
        out[f"emb_layer_norm_after.{part}"] = ours[f"final_norm.{part}"]
        for i in range(model.config.num_layers):
            layer = f"layers.{i}."
            q, k, v = ours[f"{layer}qkv.{part}"].chunk(3, dim=0)
            out.update(
                {
                    f"{layer}self_attn.q_proj.{part}": q,
                    f"{layer}self_attn.k_proj.{part}": k,
                    f"{layer}self_attn.v_proj.{part}": v,
                }
            )
            out[f"{layer}self_attn.out_proj.{part}"] = ours[f"{layer}out_proj.{part}"]
            out[f"{layer}self_attn_layer_norm.{part}"] = ours[f"{layer}attn_norm.{part}"]
            out[f"{layer}final_layer_norm.{part}"] = ours[f"{layer}ffn_norm.{part}"]
            out[f"{layer}fc1.{part}"] = ours[f"{layer}fc1.{part}"]
            out[f"{layer}fc2.{part}"] = ours[f"{layer}fc2.{part}"]
    return out


# HF transformers EsmModel names <-> fair-esm names (per layer i, then global)
_HF_LAYER_NAMES = [
    ("self_attn.q_proj", "attention.self.query"),
    ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"),
    ("self_attn.out_proj", "attention.output.dense"),
    ("self_attn_layer_norm", "attention.LayerNorm"),
    ("fc1", "intermediate.dense"),
    ("fc2", "output.dense"),
    ("final_layer_norm", "LayerNorm"),
]
_HF_GLOBAL_NAMES = [
    ("embed_tokens.weight", "embeddings.word_embeddings.weight"),
    ("emb_layer_norm_after.weight", "encoder.emb_layer_norm_after.weight"),
    ("emb_layer_norm_after.bias", "encoder.emb_layer_norm_after.bias"),
]
_HF_IGNORED = ("lm_head.", "pooler.", "contact_head.", "embeddings.position_ids")


def hf_to_fairesm_names(state_dict: dict) -> dict:
    """transformers EsmModel / EsmForMaskedLM state dict (with or without 'esm.') -> fair-esm names."""
    out = {}
    layer_map = dict((hf, fair) for fair, hf in _HF_LAYER_NAMES)
    global_map = dict((hf, fair) for fair, hf in _HF_GLOBAL_NAMES)
    for name, tensor in state_dict.items():
        bare = name.removeprefix("esm.")
        # LayerNorm params may be saved under their legacy names (transformers 5 save_pretrained does)
        bare = bare.removesuffix(".gamma") + ".weight" if bare.endswith(".gamma") else bare
        bare = bare.removesuffix(".beta") + ".bias" if bare.endswith(".beta") else bare
        if bare.startswith(_HF_IGNORED) or bare.endswith("rotary_embeddings.inv_freq"):
            continue
        if bare in global_map:
            out[global_map[bare]] = tensor
        elif bare.startswith("encoder.layer."):
            index, rest = bare.removeprefix("encoder.layer.").split(".", 1)
            module, part = rest.rsplit(".", 1)
            if module not in layer_map:
                raise UserError(
                    f"unexpected tensor {name!r} in HF ESM weights", "pass an ESM-2 (rotary) checkpoint"
                )
            out[f"layers.{index}.{layer_map[module]}.{part}"] = tensor
        else:
            raise UserError(
                f"unexpected tensor {name!r} in HF ESM weights", "pass an ESM-2 (rotary) checkpoint"
            )
    return out


def fairesm_to_hf_names(state_dict: dict, prefix: str = "esm.") -> dict:
    """Inverse of hf_to_fairesm_names (for tests and export)."""
    out = {}
    global_map = dict(_HF_GLOBAL_NAMES)
    layer_map = dict(_HF_LAYER_NAMES)
    for name, tensor in state_dict.items():
        if name.startswith(_FAIRESM_IGNORED_PREFIXES) or name.endswith("rot_emb.inv_freq"):
            continue
        if name in global_map:
            out[prefix + global_map[name]] = tensor
        else:
            _, index, rest = name.split(".", 2)
            module, part = rest.rsplit(".", 1)
            out[f"{prefix}encoder.layer.{index}.{layer_map[module]}.{part}"] = tensor
    return out


def file_sha256(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _cfg_get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _check_shape(config: ESM2Config, layers, dim, heads, source) -> None:
    found = (layers, dim, heads)
    expected = (config.num_layers, config.embed_dim, config.attention_heads)
    if any(f is not None and f != e for f, e in zip(found, expected)):
        raise UserError(
            f"{source} holds layers/dim/heads {found}, but {config.name} is {expected}",
            "pass the model name that matches the weights",
        )


def read_fairesm_checkpoint(path: Path, config: ESM2Config) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # fair-esm's own checkpoints pickle an argparse/omegaconf config; this is a local file the user named
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(
                f"cannot read weights file {path}: {exc}", "pass a fair-esm .pt checkpoint"
            ) from exc
    if isinstance(data, dict) and "model" in data:
        cfg = _cfg_get(data.get("cfg") or {}, "model") or {}
        _check_shape(
            config,
            _cfg_get(cfg, "encoder_layers"),
            _cfg_get(cfg, "encoder_embed_dim"),
            _cfg_get(cfg, "encoder_attention_heads"),
            str(path),
        )
        return data["model"]
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data  # a bare fair-esm state dict
    raise UserError(
        f"{path} is not a fair-esm checkpoint", "pass esm2_*.pt as fair-esm saves it, or a HF folder"
    )


def read_hf_folder(folder: Path, config: ESM2Config) -> tuple[dict, list[Path]]:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise UserError(
            f"{folder} has no config.json", "pass a HuggingFace ESM-2 folder or a fair-esm .pt file"
        )
    hf = json.loads(config_path.read_text())
    if hf.get("position_embedding_type", "rotary") != "rotary" or hf.get("emb_layer_norm_before"):
        raise UserError(f"{folder} is not an ESM-2 model (no rotary embeddings)", "pass an ESM-2 checkpoint")
    _check_shape(
        config, hf.get("num_hidden_layers"), hf.get("hidden_size"), hf.get("num_attention_heads"), str(folder)
    )

    if (folder / "model.safetensors.index.json").exists():
        files = sorted(
            set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
        )
        files = [folder / f for f in files]
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    else:
        files = []
    if files:
        try:
            from safetensors.torch import load_file
        except ImportError:
            files = []
            if not (folder / "pytorch_model.bin").exists():
                raise UserError(
                    f"{folder} holds safetensors weights but the safetensors package is not installed",
                    "pip install safetensors (or put pytorch_model.bin in the folder)",
                ) from None
        else:
            sd = {}
            for f in files:
                sd.update(load_file(str(f)))
            return sd, files
    bin_path = folder / "pytorch_model.bin"
    if not bin_path.exists():
        raise UserError(
            f"{folder} has no model.safetensors or pytorch_model.bin", "pass a complete HF ESM-2 folder"
        )
    return torch.load(bin_path, map_location="cpu", weights_only=True), [bin_path]
