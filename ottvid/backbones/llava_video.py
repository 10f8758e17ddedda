"""LLaVA-Video-7B-Qwen2 in the transformers LLaVA-OneVision class: one-off checkpoint conversion.

`lmms-lab/LLaVA-Video-7B-Qwen2` is a LLaVA-NeXT (`llava_qwen`) checkpoint: a Qwen2 LLM, SigLIP-so400m
with its last layer removed (26 layers, features = output of the last kept layer), a 2-layer GELU MLP
projector and a learned `image_newline`. That is architecturally the transformers
`LlavaOnevisionForConditionalGeneration`; only names and the video path differ (2x2 average pooling to
13x13 = 169 tokens per frame and a newline after every grid row, handled by the adapter).

    python -m ottvid.backbones.llava_video convert --src <local LLaVA-Video-7B-Qwen2> --out <dir>

(or nothing: `load_backbone("llava_video", "lmms-lab/LLaVA-Video-7B-Qwen2")` converts on first use into
`converted_dir()`, atomically, and reuses the result) streams the shards with renamed keys (no model is instantiated), writes a `LlavaOnevisionConfig`
with an `ottvid_llava_video` block, copies the checkpoint's `generation_config.json`, and a processor (the checkpoint's tokenizer plus `<image>` and
`<video>` tokens, SigLIP 384 px image/video processors, the qwen_1_5 chat template).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

# original LLaVA-NeXT name -> transformers LLaVA-OneVision name (first match wins)
KEY_MAP: list[tuple[str, str]] = [
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.image_newline$", "model.image_newline"),
    (r"^model\.(embed_tokens|layers|norm)\b", r"model.language_model.\1"),
    (r"^lm_head\.", "lm_head."),
]
_INVERSE: list[tuple[str, str]] = [
    (r"^model\.vision_tower\.", "model.vision_tower.vision_tower.vision_model."),
    (r"^model\.multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^model\.multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
    (r"^model\.image_newline$", "model.image_newline"),
    (r"^model\.language_model\.", "model."),
    (r"^lm_head\.", "lm_head."),
]
# What LLaVA-Video does with the pooled SigLIP grid, stored in the converted config.
LLAVA_VIDEO_BLOCK = {"spatial_pool_mode": "average", "spatial_pool_stride": 2, "newline_position": "grid",
                     "add_time_instruction": True}
QWEN_1_5_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for pat, rep in table:
        if re.search(pat, key):
            return re.sub(pat, rep, key)
    return None


def map_key(key: str) -> str | None:
    """Original LLaVA-NeXT key -> transformers key; None for weights the HF class has no slot for."""
    if ".vision_model.head." in key:
        return None
    return _rename(key, KEY_MAP)


def hf_to_original_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse mapping (used by the tiny builder to write an original-format checkpoint)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.vision_tower.head."):  # LLaVA-NeXT drops SigLIP's pooling head
            continue
        nk = _rename(k, _INVERSE)
        if nk is None:
            raise KeyError(f"no original name for {k}")
        out[nk] = v
    return out


def original_config_from_hf(cfg) -> dict:
    """An original-style `llava_qwen` config.json for a LlavaOnevisionConfig (tiny builder)."""
    t, v = cfg.text_config, cfg.vision_config
    return {
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava",
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads, "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": (t.rope_parameters or {}).get("rope_theta", 1e6), "vocab_size": t.vocab_size,
        "max_position_embeddings": t.max_position_embeddings, "tie_word_embeddings": False,
        "hidden_act": t.hidden_act, "mm_hidden_size": v.hidden_size, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_spatial_pool_mode": "average", "mm_spatial_pool_stride": 2,
        "mm_newline_position": "grid", "mm_patch_merge_type": "spatial_unpad",
        # vision tower hyperparameters are not in LLaVA-NeXT's config; these fields let tiny builds differ
        "ottvid_vision_config": {"hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                                 "num_attention_heads": v.num_attention_heads, "image_size": v.image_size,
                                 "patch_size": v.patch_size},
    }


# SigLIP-so400m-patch14-384 (the tower every LLaVA-Video / LLaVA-OV checkpoint uses).
_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "image_size": 384,
           "patch_size": 14}


def is_original_checkpoint(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return False
    d = json.loads(cfg.read_text())
    return d.get("model_type") in ("llava", "llava_qwen") or "LlavaQwenForCausalLM" in d.get("architectures", [])


def _shards(src: Path) -> list[Path]:
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    files = sorted(src.glob("pytorch_model*.bin"))
    if files:
        return files
    raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {src}")


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def convert(src: str | Path, out: str | Path, image_size: int | None = None) -> Path:
    """Convert an original LLaVA-Video checkpoint directory into a LLaVA-OneVision checkpoint at `out`."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlavaOnevisionConfig

    src, out = Path(src), Path(out)
    if not is_original_checkpoint(src):
        raise ValueError(f"src: {src} is not a LLaVA-NeXT llava_qwen checkpoint (config.json model_type 'llava')")
    out.mkdir(parents=True, exist_ok=True)
    ocfg = json.loads((src / "config.json").read_text())
    vis = dict(_SO400M, **ocfg.get("ottvid_vision_config", {}))
    if image_size is not None:
        vis["image_size"] = image_size

    weight_map: dict[str, str] = {}
    n_vision_layers = 0
    for shard in _shards(src):
        sd = _load_shard(shard)
        new = {}
        for k, v in sd.items():
            nk = map_key(k)
            if nk is None:
                continue
            if nk in new or nk in weight_map:
                raise ValueError(f"duplicate key after mapping: {nk}")
            m = re.match(r"model\.vision_tower\.encoder\.layers\.(\d+)\.", nk)
            if m:
                n_vision_layers = max(n_vision_layers, int(m.group(1)) + 1)
            new[nk] = v.contiguous()
        name = shard.with_suffix(".safetensors").name
        save_file(new, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in new})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    if n_vision_layers == 0:
        raise ValueError(f"src: no vision tower weights found in {src}")

    tok = AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    vocab = ocfg["vocab_size"]
    image_id, video_id = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<video>")
    if max(image_id, video_id) >= vocab:
        raise ValueError(f"tokenizer: <image>/<video> ids {image_id},{video_id} exceed the embedding size {vocab}")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    text = {"model_type": "qwen2", "vocab_size": vocab, "hidden_size": ocfg["hidden_size"],
            "intermediate_size": ocfg["intermediate_size"], "num_hidden_layers": ocfg["num_hidden_layers"],
            "num_attention_heads": ocfg["num_attention_heads"], "num_key_value_heads": ocfg["num_key_value_heads"],
            "rms_norm_eps": ocfg.get("rms_norm_eps", 1e-6), "max_position_embeddings": ocfg.get("max_position_embeddings", 32768),
            "hidden_act": ocfg.get("hidden_act", "silu"), "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": float(ocfg.get("rope_theta", 1e6))},
            "eos_token_id": eos, "pad_token_id": tok.pad_token_id, "bos_token_id": None}
    vision = {"model_type": "siglip_vision_model", "num_hidden_layers": n_vision_layers, "vision_use_head": False,
              **vis}
    cfg = LlavaOnevisionConfig(text_config=text, vision_config=vision, image_token_index=image_id,
                               video_token_index=video_id, vision_feature_select_strategy="full",
                               vision_feature_layer=-1, tie_word_embeddings=False,
                               image_grid_pinpoints=ocfg.get("image_grid_pinpoints") or [[vis["image_size"]] * 2])
    cfg.ottvid_llava_video = dict(LLAVA_VIDEO_BLOCK, source=str(src))
    cfg.architectures = ["LlavaOnevisionForConditionalGeneration"]
    cfg.save_pretrained(out)
    if (src / "generation_config.json").exists():  # the checkpoint's decoding defaults travel with it
        shutil.copyfile(src / "generation_config.json", out / "generation_config.json")
    _processor(tok, vis["image_size"], cfg.image_grid_pinpoints).save_pretrained(out)
    return out


CONVERT_VERSION = "2"  # bump when `convert` changes: cached conversions of another version are redone
_DONE = ".ottvid_converted"


def converted_dir(root: str | Path | None = None) -> Path:
    """Where on-first-use conversions live: `root`, else `$HF_HOME/ottvid/llava_video` (next to the hub cache)."""
    if root is not None:
        return Path(root).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "ottvid" / "llava_video"


def ensure_converted(src: str | Path, root: str | Path | None = None) -> Path:
    """The converted copy of the original checkpoint `src`, converting it once if needed.

    One directory per source snapshot (its resolved path names the hub revision), written to a private
    temporary directory and renamed into place when complete, so an interrupted or concurrent conversion
    never leaves a half-written checkpoint that a later run would load.
    """
    src = Path(src).resolve()
    if not is_original_checkpoint(src):
        raise ValueError(f"src: {src} is not a LLaVA-NeXT llava_qwen checkpoint (config.json model_type 'llava')")
    tag = hashlib.sha256(f"{src}|{CONVERT_VERSION}".encode()).hexdigest()[:12]
    name = src.parent.parent.name.split("--")[-1] if src.parent.name == "snapshots" else src.name
    out = converted_dir(root) / f"{name}-{tag}"
    stamp = f"{CONVERT_VERSION}\n{src}\n"
    if (out / _DONE).exists() and (out / _DONE).read_text() == stamp:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(src, tmp)
        (tmp / _DONE).write_text(stamp)
        if out.exists():  # a stale or foreign copy (another version, or a concurrent run that finished first)
            if (out / _DONE).exists() and (out / _DONE).read_text() == stamp:
                return out
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # a concurrent conversion renamed its copy in first
            if not ((out / _DONE).exists() and (out / _DONE).read_text() == stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _processor(tok, image_size: int, pinpoints):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    norm = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    ip = LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size},
                                      image_grid_pinpoints=pinpoints, **norm)
    vp = LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}, **norm)
    tok.chat_template = QWEN_1_5_TEMPLATE
    return LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                                   num_image_tokens=(image_size // 14) ** 2, vision_feature_select_strategy="full",
                                   chat_template=QWEN_1_5_TEMPLATE)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Convert lmms-lab/LLaVA-Video-7B-Qwen2 to the LLaVA-OneVision class")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--src", required=True, help="local directory of the original checkpoint")
    c.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    print(convert(args.src, args.out))


if __name__ == "__main__":
    main()
