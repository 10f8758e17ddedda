"""What every backbone adapter shares: loading checks, the timed decode loop, per-sample stats.

Data path of one sample (DESIGN.md), each step a public method so a sweep can encode once and
compress many times: `load` (decode + sample frames) -> `build_inputs` (prompt + processor) ->
`encode` (vision tower once, saliency/keys captured from its last layer) -> VideoTokens -> `compress`
-> `splice` between the text tokens with positions -> `generate_prepared` (prefill + greedy decode
with the checkpoint's generation rule). `prepare` and `generate` chain them. Family specifics live in
`qwen2_5_vl.py` and `llava.py`.

Decoding rule (docs/backbones.md): what HF `generate(do_sample=False)` does on top of the checkpoint's
`generation_config` (e.g. Qwen2.5-VL-7B-Instruct's `repetition_penalty` 1.05 still applies), with
transformers' own logits processors, over our spliced `inputs_embeds` and position ids.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..contract import CompressedTokens, VideoTokens
from ..efficiency import prefill_tflops
from ..registry import build_compressor
from .video import Frames

DEFAULTS_FILE = "ottvid_backbone.json"


# ---------------------------------------------------------------- checkpoint resolution

def env_flag(name: str) -> bool:
    """Whether an on/off environment variable such as HF_HUB_OFFLINE is set to a true value."""
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def resolve_checkpoint(pretrained: str, how_to_get: str) -> Path:
    """Local directory of `pretrained` (a path or a hub id already in the local HF cache).

    Raises FileNotFoundError with instructions when it is not available; never waits on the
    network when HF_HUB_OFFLINE=1 (the cache is consulted with local_files_only).
    """
    p = Path(pretrained).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"pretrained: {p} has no config.json; {how_to_get}")
        return p
    if p.exists() or pretrained.count("/") != 1 or pretrained.startswith((".", "/")):
        raise FileNotFoundError(f"pretrained: checkpoint {pretrained!r} not found; {how_to_get}")
    offline = env_flag("HF_HUB_OFFLINE")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(pretrained, local_files_only=True))
    except Exception as e:  # not in the local cache
        if offline:
            raise FileNotFoundError(
                f"pretrained: {pretrained!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                f"{how_to_get}") from e
    try:
        return Path(snapshot_download(pretrained))
    except Exception as e:
        raise FileNotFoundError(f"pretrained: could not download {pretrained!r} ({e}); {how_to_get}") from e


def checkpoint_params(path: Path) -> float:
    """Parameter count estimated from the config (hidden size and depth), without loading weights."""
    cfg = json.loads((path / "config.json").read_text())
    t = cfg.get("text_config", cfg)
    h, n, v = t.get("hidden_size", 0), t.get("num_hidden_layers", 0), t.get("vocab_size", 0)
    return 12 * h * h * n + 2 * h * v


def check_device(device: str, path: Path) -> None:
    """Refuse a 7B-scale model on CPU or a missing GPU, before any weights are read."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {device!r} requested but no CUDA GPU is available")
    if not device.startswith("cuda") and checkpoint_params(path) > 1e9:
        raise RuntimeError(
            f"device: {path} is a {checkpoint_params(path) / 1e9:.0f}B-scale model and needs a CUDA GPU "
            f"(found {'none' if not torch.cuda.is_available() else 'one, but device=' + device}); "
            "use a tiny backbone (backbone=tiny_*) for CPU runs")


def read_defaults(path: Path, protocol: dict[str, Any]) -> dict[str, Any]:
    """Protocol defaults of the family, overridden by the checkpoint's `ottvid_backbone.json` (tiny builds)."""
    d = dict(protocol)
    f = path / DEFAULTS_FILE
    if f.exists():
        d.update(json.loads(f.read_text()))
    return d


def parse_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto", "None"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
    if dtype not in names:
        raise ValueError(f"dtype: must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


# ---------------------------------------------------------------- timing

class Timer:
    """Milliseconds of named stages: CUDA events on a GPU (device time of the stage's kernels, the
    stream synchronised before reading), the monotonic `perf_counter` clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            yield
            dt = (time.perf_counter() - t0) * 1e3
        self.ms[name] = self.ms.get(name, 0.0) + dt


# ---------------------------------------------------------------- adapter base

@dataclass
class Prepared:
    """Everything between encoding and the LLM: the spliced sequence and its bookkeeping."""

    inputs_embeds: torch.Tensor      # (1, L, D)
    position_ids: torch.Tensor       # (1, L) or (3, 1, L)
    next_position: int               # position of the first generated token
    video: VideoTokens
    compressed: CompressedTokens
    extras: dict[str, Any] = field(default_factory=dict)
    # (1, L0) prompt ids HF `generate` would hold for this sample (the logits processors' context, e.g. the
    # repetition penalty); None where the official call passes only `inputs_embeds` (context = generated ids)
    input_ids: torch.Tensor | None = None


@dataclass
class Encoded:
    """One sample decoded and through the vision tower: what every compression setting of it shares."""

    frames: Frames
    inputs: dict                     # the processor's outputs (prompt ids, pixels, grid) for this sample
    video: VideoTokens


class Adapter:
    """Base class: a transformers video LLM plus a compressor, run sample by sample (batch size 1)."""

    family: str = ""

    def __init__(self, model, processor, path: Path, method: str = "vanilla", hparams: dict | None = None,
                 defaults: dict | None = None):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.path = path
        self.defaults = dict(defaults or {})
        # decodes and vision passes run so far (a shared sweep asserts one of each per sample)
        self.counts = {"decode": 0, "vision": 0}
        self.set_method(method, **(hparams or {}))

    def set_method(self, method: str, **hparams) -> None:
        self.method = method
        self.hparams = dict(hparams)
        self.compressor = build_compressor(method, **hparams)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- to implement per family
    def load(self, video_path: str) -> Frames:
        raise NotImplementedError

    def build_inputs(self, frames: Frames, question: str) -> dict:
        raise NotImplementedError

    def encode(self, inputs: dict, frames: Frames) -> VideoTokens:
        raise NotImplementedError

    def splice(self, inputs: dict, video: VideoTokens, out: CompressedTokens) -> Prepared:
        raise NotImplementedError

    def language_model(self):
        return self.model.model.language_model

    def decode_positions(self, pos: int) -> torch.Tensor:
        raise NotImplementedError

    # -- shared
    def compress(self, video: VideoTokens) -> CompressedTokens:
        out = self.compressor(video)
        if out.features.shape[-1] != video.features.shape[-1]:
            raise ValueError(f"{self.method}: returned features of dim {out.features.shape[-1]}, "
                             f"expected {video.features.shape[-1]}")
        return out

    @torch.no_grad()
    def encode_sample(self, video_path: str, question: str, timer: Timer | None = None) -> Encoded:
        """load -> build_inputs -> encode: the part of a sample every compression setting shares."""
        timer = timer or Timer(self.device)
        with timer("decode"):  # on the CPU: decode + resize, prompt, processor (not part of TTFT)
            frames = self.load(video_path)
            inputs = self.build_inputs(frames, question)
        with timer("vision"):
            video = self.encode(inputs, frames)
        self.counts["decode"] += 1
        self.counts["vision"] += 1
        return Encoded(frames=frames, inputs=inputs, video=video)

    @torch.no_grad()
    def prepare_encoded(self, enc: Encoded, timer: Timer | None = None) -> Prepared:
        """compress -> splice an encoded sample with the current method."""
        timer = timer or Timer(self.device)
        with timer("compress"):
            out = self.compress(enc.video)
        with timer("splice"):
            prep = self.splice(enc.inputs, enc.video, out)
        prep.extras.setdefault("prompt", enc.inputs.get("prompt"))
        prep.extras.setdefault("frame_indices", list(enc.frames.indices))
        return prep

    @torch.no_grad()
    def prepare(self, video_path: str, question: str, timer: Timer | None = None) -> Prepared:
        """load -> build_inputs -> encode -> compress -> splice for one sample."""
        timer = timer or Timer(self.device)
        return self.prepare_encoded(self.encode_sample(video_path, question, timer), timer)

    @torch.no_grad()
    def prefill(self, prep: Prepared, cache=None):
        """One LLM forward over the spliced sequence; returns (last-token logits (V,), cache)."""
        from transformers import DynamicCache

        cache = cache if cache is not None else DynamicCache(config=self.model.config.get_text_config())
        out = self.language_model()(inputs_embeds=prep.inputs_embeds, position_ids=prep.position_ids,
                                    past_key_values=cache, use_cache=True)
        logits = self.model.lm_head(out.last_hidden_state[:, -1:])
        return logits[0, -1].float(), out.past_key_values

    def eos_token_ids(self) -> list[int]:
        """Token ids that end generation: the checkpoint's generation_config and the tokenizer's eos."""
        ids = []
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            for i in ([src] if isinstance(src, int) else (src or [])):
                if i not in ids:
                    ids.append(int(i))
        return ids

    def logits_processor(self, prompt_len: int):
        """transformers' own logits processors of greedy `generate` on the checkpoint's generation_config.

        The official calls pass `do_sample=False, temperature=None, top_p=None, num_beams=1`: sampling
        warpers drop out, processors such as `repetition_penalty` stay. Built exactly as `generate` builds
        them (`_prepare_generation_config`, `_prepare_special_tokens`, `_get_logits_processor`).
        """
        m = self.model
        eos = self.eos_token_ids()
        gc, _ = m._prepare_generation_config(None, do_sample=False, temperature=None, top_p=None, num_beams=1,
                                             eos_token_id=eos if len(eos) > 1 else eos[0],
                                             pad_token_id=self.tokenizer.pad_token_id)
        m._prepare_special_tokens(gc, True, device=self.device)
        return m._get_logits_processor(gc, input_ids_seq_length=prompt_len, device=self.device)

    @torch.no_grad()
    def generate_prepared(self, prep: Prepared, max_new_tokens: int = 16, until: list[str] | None = None,
                          timer: Timer | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Greedy decoding from a spliced sample: (generated ids, raw logits (n, V), processed scores (n, V)).

        Stops at an eos id, after `max_new_tokens`, or once an `until` string has appeared (the text before
        it is what greedy decoding to the end would give). Position ids continue at `prep.next_position`.
        """
        dev = self.device
        timer = timer or Timer(dev)
        seq = prep.input_ids.to(dev) if prep.input_ids is not None else torch.zeros(1, 0, dtype=torch.long, device=dev)
        procs = self.logits_processor(seq.shape[1])
        eos = set(self.eos_token_ids())
        with timer("prefill"):
            logits, cache = self.prefill(prep)
            scores = procs(seq, logits[None])[0]
            token = int(scores.argmax())
        ids, all_logits, all_scores = [token], [logits], [scores]
        seq = torch.cat([seq, seq.new_tensor([[token]])], dim=1)
        embed = self.language_model().get_input_embeddings()
        pos = prep.next_position
        while token not in eos and len(ids) < max_new_tokens:
            if until and any(u and u in self.tokenizer.decode(ids, skip_special_tokens=True) for u in until):
                break
            x = embed(torch.tensor([[token]], device=dev))
            o = self.language_model()(inputs_embeds=x, position_ids=self.decode_positions(pos),
                                      past_key_values=cache, use_cache=True)
            cache, pos = o.past_key_values, pos + 1
            logits = self.model.lm_head(o.last_hidden_state[:, -1:])[0, -1].float()
            scores = procs(seq, logits[None])[0]
            token = int(scores.argmax())
            seq = torch.cat([seq, seq.new_tensor([[token]])], dim=1)
            ids.append(token)
            all_logits.append(logits)
            all_scores.append(scores)
        return ids, torch.stack(all_logits), torch.stack(all_scores)

    def answer_text(self, ids: list[int], until: list[str] | None = None) -> str:
        """Generated ids to the answer string: special tokens dropped, cut at the first `until` string."""
        eos = set(self.eos_token_ids())
        text = self.tokenizer.decode([i for i in ids if i not in eos], skip_special_tokens=True)
        for u in until or []:
            if u:
                text = text.split(u)[0]
        return text

    @torch.no_grad()
    def generate(self, video_path: str, question: str, max_new_tokens: int = 16,
                 until: list[str] | None = None) -> tuple[str, dict]:
        """One sample end to end. Returns the text and the per-sample stats (timing, memory, tokens, prompt)."""
        dev = self.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        timer = Timer(dev)
        prep = self.prepare(video_path, question, timer)
        return self.finish(prep, timer, max_new_tokens, until)

    @torch.no_grad()
    def finish(self, prep: Prepared, timer: Timer, max_new_tokens: int = 16,
               until: list[str] | None = None) -> tuple[str, dict]:
        """Decode a prepared sample and collect its stats (`timer` holds its vision/compress/splice times)."""
        dev = self.device
        ids, logits, scores = self.generate_prepared(prep, max_new_tokens, until, timer)
        text = self.answer_text(ids, until)
        ms = timer.ms
        stats = {
            "tokens_in": int(prep.video.num_frames * prep.video.tokens_per_frame),
            "tokens_out": int(prep.compressed.count),
            "decode_ms": ms.get("decode", 0.0),
            "vision_ms": ms.get("vision", 0.0), "compress_ms": ms.get("compress", 0.0),
            "prefill_ms": ms.get("prefill", 0.0),
            "ttft_ms": ms.get("vision", 0.0) + ms.get("compress", 0.0) + ms.get("splice", 0.0) + ms.get("prefill", 0.0),
            "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            # analytic LLM prefill cost of the spliced sequence (ottvid/efficiency.py, docs/efficiency.md)
            "prefill_tokens": int(prep.inputs_embeds.shape[1]),
            "tflops": prefill_tflops(self.model.config, prep.inputs_embeds.shape[1]),
            "frames": len(prep.extras.get("frame_indices", [])) or prep.video.num_frames,
            "grid_thw": [prep.video.num_frames, *prep.video.grid_hw],
            "prompt_text": prep.extras.get("prompt"),
            "method_stats": _plain(prep.compressed.stats),
            "generated_ids": ids,
        }
        self.last_logits, self.last_scores = logits, scores
        return text, stats


def _plain(x: Any) -> Any:
    """Stats to plain Python (JSON-safe) values."""
    if torch.is_tensor(x):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isinf(x):
        return x
    return x


def received_attention(q: torch.Tensor, k: torch.Tensor, scale: float, chunk_elems: int = 1 << 26) -> torch.Tensor:
    """Attention each key receives, averaged over heads and queries, in float32.

    q, k: (B, heads, S, d) -> (B, S). Rows of softmax(q k^T * scale) are summed in query chunks so
    the (B, heads, S, S) matrix is never materialised at once; each output row sums to 1.
    """
    B, Hh, S, _ = q.shape
    q, k = q.float(), k.float()
    step = max(1, chunk_elems // max(1, B * Hh * S))
    acc = torch.zeros(B, S, dtype=torch.float32, device=q.device)
    for s in range(0, S, step):
        p = torch.softmax(torch.matmul(q[:, :, s:s + step], k.transpose(-1, -2)) * scale, dim=-1)
        acc += p.sum(dim=(1, 2))
    return acc / (Hh * S)
