"""Tiny offline backbones: random seeded weights, a locally built tokenizer, the real processors.

`build_tiny(family, out_dir)` writes a checkpoint directory that loads through exactly the
`from_pretrained` path a real checkpoint takes (for `llava_video`: an original LLaVA-NeXT style
checkpoint is written first and then converted by `ottvid.backbones.llava_video.convert`, the same
command a user runs on `lmms-lab/LLaVA-Video-7B-Qwen2`). Builds are idempotent: an existing
complete build is reused.

    python -m ottvid.backbones.tiny --family qwen2_5_vl --out cache/tiny
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from .llava_video import QWEN_1_5_TEMPLATE

FAMILIES = ("qwen2_5_vl", "llava_onevision", "llava_video")
SEED = 0
DONE = ".ottvid_tiny_done"
BUILD_VERSION = "4"  # bump when the builders change: cached builds of another version are rebuilt
# Whole-word answer tokens, each an option letter and a time span inside the synthetic clips
# (" C. 0 - 2"), so whatever the untrained model picks parses as a multiple-choice answer and as a
# grounding answer; their output-embedding rows are scaled by ANSWER_GAIN (see `_reinit`).
ANSWER_TOKENS = [f" {c}. {a} - {b}" for c, (a, b) in zip("ABCDABCD", ((0, 1), (1, 2), (0, 2), (1, 3),
                                                                     (2, 3), (0, 3), (1, 3), (0, 2)))]
ANSWER_GAIN = 4.0
# Per-checkpoint protocol overrides read by the adapters (see backbones/common.py).
DEFAULTS_FILE = "ottvid_backbone.json"

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
_LLAVA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# Qwen2.5-VL chat format: default system turn, visuals as <|vision_start|><|X_pad|><|vision_end|>.
_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA: the qwen_1_5 conversation the LLaVA-OV / LLaVA-Video checkpoints were trained with.
_LLAVA_TEMPLATE = QWEN_1_5_TEMPLATE


def build_tokenizer(specials: list[str], chat_template: str, **extra):
    """Byte-level BPE over the 256 byte symbols (no merges) plus the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials, **extra)
    fast.add_tokens(ANSWER_TOKENS)
    fast.chat_template = chat_template
    return fast


def _text_config(vocab_size: int, **kw) -> dict:
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
               rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg.update(kw)
    return cfg


def _build_qwen(out: Path) -> None:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok = build_tokenizer(_QWEN_SPECIALS, _QWEN_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    vocab = len(tok) + 16
    text = _text_config(vocab, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                 "mrope_section": [2, 3, 3]},
                        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1], tokens_per_second=2, in_channels=3)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    cfg.bos_token_id = cfg.text_config.bos_token_id = None
    cfg.eos_token_id = cfg.text_config.eos_token_id = ids["<|im_end|>"]
    cfg.pad_token_id = ids["<|endoftext|>"]
    cfg.text_config.pad_token_id = ids["<|endoftext|>"]
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    _reinit(model, tok)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    # Small pixel budgets so a frame is a handful of merged tokens (4x4 .. 6x6 grids).
    px = dict(min_pixels=56 * 56, max_pixels=84 * 84 * 2, patch_size=14, temporal_patch_size=2, merge_size=2)
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**px), tokenizer=tok,
                               video_processor=Qwen2VLVideoProcessor(**px), chat_template=_QWEN_TEMPLATE)
    proc.save_pretrained(out)
    _write_defaults(out, {"max_frames_num": 8, "min_pixels": px["min_pixels"], "max_pixels": px["max_pixels"],
                          "vtg_max_frames": 16})


def _llava_config(tok, image_size: int):
    from transformers import LlavaOnevisionConfig

    vocab = len(tok) + 16
    text = dict(_text_config(vocab), model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=14, vision_use_head=True)
    cfg = LlavaOnevisionConfig(text_config=text, vision_config=vision,
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"),
                               vision_feature_select_strategy="full", vision_feature_layer=-1,
                               image_grid_pinpoints=[[image_size, image_size]], tie_word_embeddings=False)
    cfg.text_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    cfg.text_config.pad_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg.text_config.bos_token_id = None
    return cfg


def _llava_processor(tok, image_size: int):
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    norm = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    ip = LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size},
                                      image_grid_pinpoints=[[image_size, image_size]], **norm)
    vp = LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}, **norm)
    n = (image_size // 14) ** 2
    return LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, num_image_tokens=n,
                                   vision_feature_select_strategy="full", chat_template=_LLAVA_TEMPLATE)


# 126 px / 14 = a 9x9 SigLIP grid: bilinear-pooled to 5x5 (LLaVA-OV), 2x2-averaged to 4x4 (LLaVA-Video),
# the tiny analogue of 27x27 -> 14x14 / 13x13.
_LLAVA_IMAGE = 126


def _build_llava_onevision(out: Path) -> None:
    from transformers import LlavaOnevisionForConditionalGeneration

    tok = build_tokenizer(_LLAVA_SPECIALS, _LLAVA_TEMPLATE)
    cfg = _llava_config(tok, _LLAVA_IMAGE)
    torch.manual_seed(SEED)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    _reinit(model, tok)
    model.generation_config.eos_token_id = cfg.text_config.eos_token_id
    model.generation_config.pad_token_id = cfg.text_config.pad_token_id
    model.save_pretrained(out)
    _llava_processor(tok, _LLAVA_IMAGE).save_pretrained(out)
    _write_defaults(out, {"max_frames_num": 6})


def build_original_llava_video(src: str | Path) -> Path:
    """Write a tiny LLaVA-Video checkpoint in the original LLaVA-NeXT (`llava_qwen`) layout at `src`:
    what `lmms-lab/LLaVA-Video-7B-Qwen2` looks like on the hub, in miniature."""
    from safetensors.torch import save_file
    from transformers import LlavaOnevisionForConditionalGeneration

    from .llava_video import hf_to_original_state_dict, original_config_from_hf

    src = Path(src)
    src.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(_LLAVA_SPECIALS[:3], _LLAVA_TEMPLATE)  # LLaVA-Video's tokenizer has no <image>/<video>
    cfg = _llava_config(build_tokenizer(_LLAVA_SPECIALS, _LLAVA_TEMPLATE), _LLAVA_IMAGE)
    torch.manual_seed(SEED + 1)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    _reinit(model, tok)
    sd = hf_to_original_state_dict(model.state_dict())
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_text(json.dumps(original_config_from_hf(cfg), indent=2))
    tok.save_pretrained(src)
    return src


def _build_llava_video(out: Path) -> None:
    """Write an original-format (LLaVA-NeXT `llava_qwen`) tiny checkpoint, then convert it."""
    from .llava_video import convert

    with tempfile.TemporaryDirectory() as tmp:
        src = build_original_llava_video(Path(tmp) / "LLaVA-Video-tiny-Qwen2")
        convert(src, out, image_size=_LLAVA_IMAGE)
    _write_defaults(out, {"max_frames_num": 6})


def _reinit(model: torch.nn.Module, tok) -> None:
    """Seeded N(0, 0.2) weights (larger than the default init, so the tiny model's logits differ by input).

    The output-embedding rows of the answer tokens are scaled by ANSWER_GAIN, so greedy decoding
    writes answer-shaped text (" B. 1 - 2") whose content still depends on the video: the synthetic
    benchmarks' parsers then score the untrained model near chance instead of at exactly zero, and
    compressed runs differ measurably from vanilla.
    """
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        rows = tok.convert_tokens_to_ids(ANSWER_TOKENS)
        model.get_output_embeddings().weight[rows] *= ANSWER_GAIN


def _write_defaults(out: Path, d: dict) -> None:
    (out / DEFAULTS_FILE).write_text(json.dumps(d, indent=2))


_BUILDERS = {"qwen2_5_vl": _build_qwen, "llava_onevision": _build_llava_onevision, "llava_video": _build_llava_video}


def build_tiny(family: str, out_dir: str | Path) -> Path:
    """Build (once) the tiny `family` backbone under `out_dir/tiny_<family>` and return its path."""
    if family not in _BUILDERS:
        raise ValueError(f"family: must be one of {list(FAMILIES)}, got {family!r}")
    out = Path(out_dir) / f"tiny_{family}"
    if (out / DONE).exists() and (out / DONE).read_text().strip() == BUILD_VERSION:
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _BUILDERS[family](tmp)
    (tmp / DONE).write_text(BUILD_VERSION + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", required=True, choices=FAMILIES)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    print(build_tiny(args.family, args.out))


if __name__ == "__main__":
    main()
