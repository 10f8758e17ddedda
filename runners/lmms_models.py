"""lmms-eval model plugin: one model per backbone family, registered through the
`lmms_eval.models` entry point (pyproject.toml), so a plain install runs

    python -m lmms_eval --model ottvid_qwen2_5_vl \
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=ottvid,retention=0.1 --tasks mvbench

`--model_args`: `pretrained` (path, hub id, or `tiny` to build/reuse the tiny offline backbone
under `cache_dir`), `method`, `retention`, any hyperparameter of the method, `max_frames_num`,
`fps` (VTG sampling; Qwen2.5-VL), `device`, `dtype`, `seed`, `max_pixels`/`min_pixels` (Qwen2.5-VL),
`vtg_max_frames` (VTG frame cap after 2 fps sampling, Qwen2.5-VL), `time_scale` (`default` | `metadata`:
Qwen2.5-VL's seconds per temporal grid step), `siglip_head` (LLaVA: SigLIP checkpoint whose MAP head gives
`frame_features`), `force_sample`, `time_instruction`, `video_fps` (LLaVA-Video's frame sampling and time
instruction, docs/protocol.md),
`attn_implementation`, `warmup` (un-timed passes on the first request; default 1 on CUDA, 0 on CPU),
`prompt_model` (lmms-eval model name whose task prompts the model gets; default: the family's official
run's, `OFFICIAL_LMMS_MODEL`; `none`: lmms-eval's defaults). Requests lmms-eval built under another model
name (the plugin's registered `ottvid_*` name on the CLI) are re-resolved (runners/lmms_prompts.py).
The task context reaches the model as lmms-eval gives it (only `<image>` placeholders removed, as the
official wrappers do; never stripped). Every generated sample appends one dict to `sample_stats`,
including the prompt text the model received (`prompt_text`); a sample that fails (missing, truncated or
undecodable video, a task util calling `sys.exit`) answers `FAILED_RESPONSE` and appends
{doc_id, task, path, error} to `sample_failures` instead, and the other samples go on.
"""
from __future__ import annotations

import math
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

# the response of a sample that failed (no answer): every task's extractor finds no option or time span in it
FAILED_RESPONSE = ""

# keys that configure the adapter rather than the compressor
_ADAPTER_KEYS = {"pretrained", "method", "device", "dtype", "seed", "max_frames_num", "fps", "max_pixels",
                 "min_pixels", "siglip_head", "attn_implementation", "cache_dir", "system_prompt", "batch_size",
                 "vtg_max_frames", "max_new_tokens", "time_scale", "force_sample", "time_instruction", "video_fps"}


def parse_value(v: Any) -> Any:
    """--model_args values arrive as strings (or lmms-eval's int/float/bool guesses)."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    low = s.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if low in ("inf", "+inf", "infinity"):
        return math.inf
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def model_context(context):
    """The task context as the official wrappers hand it to the model: `<image>` removed, nothing stripped."""
    return context.replace("<image>", "") if isinstance(context, str) else context


class OttvidModel(lmms):
    """An adapter (backbone + compressor) behind lmms-eval's `generate_until`."""

    family = ""
    is_simple = True

    def __init__(self, pretrained: str = "", method: str = "vanilla", device: str | None = None,
                 dtype: str | None = None, seed: int = 0, cache_dir: str = "cache", batch_size: int = 1,
                 max_new_tokens: int | None = None, warmup: int | None = None, prompt_model: str | None = "official",
                 **kwargs: Any) -> None:
        super().__init__()
        import torch

        from ottvid.backbones import load_backbone
        from ottvid.registry import build_compressor

        kwargs = {k: parse_value(v) for k, v in kwargs.items()}
        method = parse_value(method)
        adapter_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in _ADAPTER_KEYS}
        hparams = kwargs  # everything else belongs to the method
        build_compressor(method, **hparams)  # unknown names / bad values fail here, before loading
        if int(parse_value(batch_size) or 1) != 1:
            raise ValueError("batch_size: ottvid models run one sample at a time (batch_size=1)")
        if not pretrained:
            raise ValueError("pretrained: a checkpoint path, hub id or 'tiny' is required")
        pretrained = str(pretrained)
        if pretrained in ("tiny", f"tiny_{self.family}"):
            from ottvid.backbones.tiny import build_tiny

            pretrained = str(build_tiny(self.family, cache_dir))
        self.seed = int(parse_value(seed) or 0)
        torch.manual_seed(self.seed)
        overrides = {k: adapter_kw.get(k) for k in ("max_frames_num", "fps", "max_pixels", "min_pixels",
                                                     "system_prompt", "vtg_max_frames", "siglip_head",
                                                     "time_scale", "force_sample", "time_instruction", "video_fps")}
        self.adapter = load_backbone(self.family, pretrained, method=method, device=parse_value(device),
                                     dtype=parse_value(dtype), overrides=overrides,
                                     attn_implementation=adapter_kw.get("attn_implementation"), **hparams)
        self.max_new_tokens = parse_value(max_new_tokens)
        # un-timed warm-up passes on the first request (CUDA context, kernel selection, allocator) so
        # no sample's latency includes one-time start-up cost; default 1 on CUDA, 0 on CPU
        w = parse_value(warmup)
        self.warmup = int(w) if w is not None else int(self.adapter.device.type == "cuda")
        self.sample_stats: list[dict] = []
        from ottvid.backbones import OFFICIAL_LMMS_MODEL

        pm = parse_value(prompt_model)
        self.prompt_model = OFFICIAL_LMMS_MODEL[self.family] if pm == "official" else (
            None if pm in (None, "", "none", "default") else str(pm))
        self._prompt_views: dict = {}
        self.sample_failures: list[dict] = []  # {doc_id, task, path, error} of each sample that failed
        self._rank, self._world_size = 0, 1

    @property
    def tokenizer(self):
        return self.adapter.tokenizer

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("ottvid models answer generate_until tasks only")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("ottvid models answer single-round generate_until tasks only")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        import torch
        from tqdm import tqdm

        from .lmms_prompts import official_request

        for req in requests:  # tasks built under another model name get this model's prompts
            req.arguments = official_request(req.args, self.task_dict, self.prompt_model, self._prompt_views)
        out = []
        if self.warmup and requests:
            try:  # a first sample that fails is recorded below, with the others
                context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[0].args
                videos = [v for v in (doc_to_visual(self.task_dict[task][split][doc_id]) or []) if isinstance(v, str)]
                q = model_context(context)
                for _ in range(self.warmup if len(videos) == 1 else 0):
                    self.adapter.generate(videos[0], q, max_new_tokens=1)
            except (Exception, SystemExit):  # noqa: BLE001
                pass
            self.warmup = 0
        for req in tqdm(requests, desc=f"{self.family}:{self.adapter.method}", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            videos = []
            try:  # one bad sample (missing or undecodable video, a task util's sys.exit) must not end the cell
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                videos = [v for v in (visuals or []) if isinstance(v, str)]
                if len(videos) != 1:
                    raise ValueError(f"doc {doc_id} of {task}: expected exactly one video path, got {visuals!r}")
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else [u for u in until if u != "\n\n"]
                max_new = int(self.max_new_tokens or gen_kwargs.get("max_new_tokens") or 128)
                torch.manual_seed(self.seed)  # methods that draw tie-breaking noise are reproducible per sample
                question = model_context(context)
                text, stats = self.adapter.generate(videos[0], question, max_new_tokens=max_new, until=until)
            except (Exception, SystemExit) as e:  # noqa: BLE001 - recorded; lmms-eval scores the sample as unanswered
                self.sample_failures.append({"doc_id": doc_id, "task": task, "path": videos[0] if videos else None,
                                             "error": f"{type(e).__name__}: {e}"})
                out.append(FAILED_RESPONSE)
                continue
            stats.pop("generated_ids", None)
            self.sample_stats.append({"doc_id": doc_id, "task": task, **stats})
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


class OttvidQwen25VL(OttvidModel):
    family = "qwen2_5_vl"


class OttvidLlavaOnevision(OttvidModel):
    family = "llava_onevision"


class OttvidLlavaVideo(OttvidModel):
    family = "llava_video"
