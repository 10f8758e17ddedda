"""Backbone adapters: Qwen2.5-VL, LLaVA-OneVision, LLaVA-Video (see docs/backbones.md).

`load_backbone(family, pretrained, method=..., **hparams)` validates the method and its
hyperparameters, resolves the checkpoint and checks the device before any weights are read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..registry import build_compressor

FAMILIES = ("qwen2_5_vl", "llava_onevision", "llava_video")
# lmms-eval model name of each family's official OTT-Vid run: lmms-eval picks a task's model-specific
# prompts (`lmms_eval_specific_kwargs`) by this name (runners/lmms_prompts.py, docs/protocol.md).
OFFICIAL_LMMS_MODEL = {"qwen2_5_vl": "qwen2_5_vl", "llava_onevision": "llava_onevision", "llava_video": "llava_vid"}


def _adapter_cls(family: str):
    if family == "qwen2_5_vl":
        from .qwen2_5_vl import HOW_TO_GET, Qwen25VLAdapter

        return Qwen25VLAdapter, HOW_TO_GET
    if family == "llava_onevision":
        from .llava import HOW_TO_GET_OV, LlavaOnevisionAdapter

        return LlavaOnevisionAdapter, HOW_TO_GET_OV
    if family == "llava_video":
        from .llava import HOW_TO_GET_VIDEO, LlavaVideoAdapter

        return LlavaVideoAdapter, HOW_TO_GET_VIDEO
    raise ValueError(f"family: must be one of {list(FAMILIES)}, got {family!r}")


def official_dtype(family: str, device: str) -> torch.dtype:
    """The official runs' dtype on CUDA (fp16 for the LLaVA family, bf16 for Qwen2.5-VL); float32 on CPU."""
    if family not in FAMILIES:
        raise ValueError(f"family: must be one of {list(FAMILIES)}, got {family!r}")
    if not str(device).startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if family == "qwen2_5_vl" else torch.float16


def load_backbone(family: str, pretrained: str | Path, method: str = "vanilla", device: str | None = None,
                  dtype: str | torch.dtype | None = None, overrides: dict[str, Any] | None = None,
                  attn_implementation: str | None = None, convert_dir: str | Path | None = None, **hparams: Any):
    """Build the family's adapter around `pretrained` with compressor `method(**hparams)`.

    `dtype` None/auto: the family's official dtype on CUDA (fp16 for LLaVA, bf16 for Qwen2.5-VL),
    float32 on CPU. An original LLaVA-NeXT checkpoint (`lmms-lab/LLaVA-Video-7B-Qwen2`) given to
    `llava_video` is converted once into `convert_dir` (default: the Hugging Face cache,
    `llava_video.converted_dir`) and the converted copy is loaded.
    """
    from .common import check_device, parse_dtype, resolve_checkpoint
    from .llava_video import ensure_converted, is_original_checkpoint

    cls, how = _adapter_cls(family)
    build_compressor(method, **hparams)  # ValueError on bad names/values, before any loading
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_checkpoint(str(pretrained), how)
    if is_original_checkpoint(path):
        if family != "llava_video":
            raise ValueError(f"pretrained: {path} is an original LLaVA-NeXT checkpoint, which only "
                             f"llava_video converts; {how}")
        check_device(device, path)  # before minutes of conversion
        path = ensure_converted(path, convert_dir)
    check_device(device, path)
    if dtype in (None, "", "auto", "None"):
        dtype = official_dtype(family, device)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    extra = {}
    if family != "qwen2_5_vl" and overrides and overrides.get("siglip_head"):
        extra["siglip_head"] = overrides.pop("siglip_head")
    return cls.from_pretrained(path, device, parse_dtype(dtype, device), method, hparams, overrides, **kw, **extra)


__all__ = ["FAMILIES", "OFFICIAL_LMMS_MODEL", "load_backbone", "official_dtype"]
