"""Qwen2.5-VL adapter: compression between the patch merger and the LLM, 3-D M-RoPE kept per token.

Inputs follow the official OTT-Vid runs (docs/protocol.md): qwen-vl-utils picks and resizes
the frames (`video.read_video_qwen_vl`), the chat template renders the same messages, the
processor patchifies (its own resize is skipped: it is the identity on qwen-vl-utils' output),
`second_per_grid_ts` is the processor default the official wrapper got (temporal_patch_size / 2 fps),
and the M-RoPE ids follow the original rule (`mrope_position_ids`), not the installed transformers'.

Saliency (PROTOCOL.md): the last vision block's self-attention (a full-attention block in
Qwen2.5-VL-7B: `fullatt_block_indexes` ends with the last block), recomputed from the block's own
input with its q/k projections and vision RoPE, softmax per attention segment (one temporal grid
step), averaged over heads and queries = attention each patch receives; summed over each 2x2 merge
unit, put back in raster order, and normalised to sum 1 per temporal step. Only that layer's
q/k are captured (a forward hook on the block's attention), never attention maps of other layers.

encoder_features: the same block's keys before RoPE, averaged over heads and over the merge unit.
frame_features: Qwen2.5-VL has no pooling head; the substitute is the per-step mean of the merged
(LLM-space) tokens, which is what FastVID's own Qwen2.5-VL port uses as its frame embedding.

Positions: as the official OTT-Vid code, the uncompressed M-RoPE ids are computed and the kept ones
gathered: each kept token keeps its (t,h,w) ids, a merged token its anchor's, text tokens keep their
uncompressed ids, decoding continues at max id + 1.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..contract import CompressedTokens, VideoTokens
from .common import Adapter, Prepared, read_defaults, received_attention
from .video import Frames, read_video_qwen_vl

# The official runs (PROTOCOL.md, docs/protocol.md): VQA 32 frames, VTG qwen-vl-utils' 2 fps up to
# `vtg_max_frames` (768: the paper's "2 fps"; 32 is the wrapper's own default), the scripts' pixel bounds.
PROTOCOL = {"max_frames_num": 32, "min_pixels": 200704, "max_pixels": 1605632, "fps": None,
            "vtg_max_frames": 768, "system_prompt": "You are a helpful assistant.", "time_scale": "default"}
# second_per_grid_ts: "default" = temporal_patch_size / 2 fps (what transformers 4.57.3's processor uses
# when no fps is passed, as in the official runs: 1.0 s); "metadata" = temporal_patch_size / the fps the
# frames were really sampled at (what transformers 5.x derives from the video metadata).
TIME_SCALES = ("default", "metadata")
PROCESSOR_DEFAULT_FPS = 2.0
HOW_TO_GET = ("download it with `huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct` on a machine with "
              "network access (or pass a local path), or use backbone=tiny_qwen2_5_vl")


def mrope_position_ids(input_ids: torch.Tensor, video_grid_thw: torch.Tensor, second_per_grid_ts, *,
                       video_token_id: int, spatial_merge_size: int, tokens_per_second: float) -> torch.Tensor:
    """(3, L) M-RoPE ids of one sequence by the original Qwen2.5-VL rule (transformers 4.x, Qwen's training code).

    Text: one id per token on all three axes, continuing at (largest id so far) + 1. A video of merged
    grid (T, H, W) starting at id s: (s + floor(t * second_per_grid_t * tokens_per_second), s + h, s + w).
    So text after a video starts at the video's largest id + 1 (transformers 5.x instead restarts it at
    s + max(H, W), which overlaps the video's time ids). 4.x casts second_per_grid_t to an integer before
    the product; here the product is taken in float64 and floored, identical for the official 1.0.
    """
    ids = input_ids.reshape(-1)
    dev = ids.device
    is_vid = (ids == video_token_id).to(torch.int8)
    edges = torch.diff(is_vid, prepend=is_vid.new_zeros(1), append=is_vid.new_zeros(1))
    starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    grids = video_grid_thw.reshape(-1, 3).tolist()
    secs = torch.as_tensor(second_per_grid_ts, dtype=torch.float64).reshape(-1).tolist()
    if len(starts) != len(grids) or len(secs) != len(grids):
        raise ValueError(f"input_ids: {len(starts)} video spans for {len(grids)} video_grid_thw rows and "
                         f"{len(secs)} second_per_grid_ts values")
    m = spatial_merge_size
    parts, nxt, prev = [], 0, 0
    for s, e, (t, h, w), sec in zip(starts, ends, grids, secs):
        gh, gw = h // m, w // m
        if e - s != t * gh * gw:
            raise ValueError(f"input_ids: a video span of {e - s} tokens does not match grid {(t, h, w)} "
                             f"(merge {m}: {t * gh * gw} tokens)")
        parts.append(torch.arange(s - prev, device=dev).expand(3, -1) + nxt)
        base = nxt + s - prev
        tt = (torch.arange(t, device=dev, dtype=torch.float64) * sec * tokens_per_second).long()
        vid = torch.stack([tt.repeat_interleave(gh * gw),
                           torch.arange(gh, device=dev).repeat_interleave(gw).repeat(t),
                           torch.arange(gw, device=dev).repeat(t * gh)]) + base
        parts.append(vid)
        nxt, prev = int(vid.max()) + 1, e
    parts.append(torch.arange(ids.numel() - prev, device=dev).expand(3, -1) + nxt)
    return torch.cat(parts, dim=1)


class Qwen25VLAdapter(Adapter):
    family = "qwen2_5_vl"

    @classmethod
    def from_pretrained(cls, path: Path, device: str, dtype: torch.dtype, method: str, hparams: dict,
                        overrides: dict | None = None, attn_implementation: str | None = None):
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        d = read_defaults(path, PROTOCOL)
        d.update({k: v for k, v in (overrides or {}).items() if v is not None})
        if d.get("time_scale") not in TIME_SCALES:
            raise ValueError(f"time_scale: must be one of {list(TIME_SCALES)}, got {d.get('time_scale')!r}")
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, **kw).to(device)
        proc = AutoProcessor.from_pretrained(path)
        # qwen-vl-utils has already resized the frames (its per-frame cap included); the processor's own
        # resize is skipped (do_resize=False), so this only silences transformers' warning about the cap
        proc.video_processor.cap_pixels_per_frame = True
        return cls(model, proc, path, method, hparams, d)

    # ---------------------------------------------------------------- inputs
    @property
    def mode(self) -> str:
        """"vtg" when frames are sampled at a rate (`fps`), else "vqa" (a fixed frame count)."""
        return "vtg" if self.defaults.get("fps") else "vqa"

    def load(self, video_path: str) -> Frames:
        """Decode + resize through qwen-vl-utils, as the official wrapper calls it."""
        d = self.defaults
        return read_video_qwen_vl(video_path, min_pixels=int(d["min_pixels"]), max_pixels=int(d["max_pixels"]),
                                  max_frames=int(d["max_frames_num"]),
                                  fps=float(d["fps"]) if d.get("fps") else None,
                                  vtg_max_frames=int(d["vtg_max_frames"]))

    def messages(self, frames: Frames, question: str) -> list[dict]:
        """The official wrapper's conversation: system prompt, then the video and the task context."""
        msgs = []
        if self.defaults.get("system_prompt"):
            msgs.append({"role": "system", "content": self.defaults["system_prompt"]})
        video = frames.element or {"type": "video"}
        msgs.append({"role": "user", "content": [video, {"type": "text", "text": question}]})
        return msgs

    def second_per_grid_t(self, frames: Frames) -> float:
        """Seconds per temporal grid step fed to M-RoPE (`time_scale`, see TIME_SCALES)."""
        tp = self.model.config.vision_config.temporal_patch_size
        fps = PROCESSOR_DEFAULT_FPS if self.defaults.get("time_scale", "default") == "default" else frames.sampled_fps
        return tp / fps

    def build_inputs(self, frames: Frames, question: str) -> dict:
        from transformers.video_utils import VideoMetadata

        text = self.processor.apply_chat_template(self.messages(frames, question), tokenize=False,
                                                  add_generation_prompt=True)
        meta = VideoMetadata(total_num_frames=frames.total_frames, fps=frames.native_fps,
                             frames_indices=list(frames.indices))
        inputs = self.processor(text=[text], videos=[frames.pixels], video_metadata=[meta], do_sample_frames=False,
                                do_resize=False, return_tensors="pt")
        inputs["second_per_grid_ts"] = torch.tensor([self.second_per_grid_t(frames)], dtype=torch.float32)
        inputs["prompt"] = text
        return inputs.to(self.device)

    # ---------------------------------------------------------------- encoding
    def encode(self, inputs: dict, frames: Frames) -> VideoTokens:
        visual = self.model.model.visual
        grid = inputs["video_grid_thw"]
        if grid.shape[0] != 1:
            raise ValueError("video_grid_thw: one video per sample is supported")
        attn = visual.blocks[-1].attn
        captured: dict = {}

        def hook(mod, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            captured["cu"] = kwargs["cu_seqlens"]
            captured["pe"] = kwargs["position_embeddings"]

        handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            out = visual(inputs["pixel_values_videos"].to(visual.dtype), grid_thw=grid)
        finally:
            handle.remove()
        merged = out.pooler_output                                   # (T*N, D) raster order
        T, gh, gw = (int(v) for v in grid[0])
        m = visual.spatial_merge_size
        H, W = gh // m, gw // m
        sal, keys = self._saliency_and_keys(attn, captured, grid)
        feats = merged.view(T, H * W, -1)
        ts = torch.tensor(frames.timestamps[::self.model.config.vision_config.temporal_patch_size][:T],
                          dtype=torch.float32, device=feats.device)
        if ts.numel() != T:
            ts = None
        return VideoTokens(features=feats, grid_hw=(H, W), saliency=sal, encoder_features=keys.to(feats.dtype),
                           frame_features=feats.float().mean(dim=1).to(feats.dtype), timestamps=ts)

    def _saliency_and_keys(self, attn, cap: dict, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, N) saliency and (T, N, head_dim) keys on the LLM-token grid, in raster order."""
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
        from transformers.vision_utils import get_vision_window_index

        visual = self.model.model.visual
        h, cu = cap["h"], cap["cu"]
        S = h.shape[0]
        q, k, _ = attn.qkv(h).reshape(S, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        k_raw = k
        cos, sin = cap["pe"]
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        seg = (cu[1:] - cu[:-1]).tolist()
        rec = torch.empty(S, dtype=torch.float32, device=h.device)
        lens = sorted(set(seg))
        # batch the equal-length segments (frames) together
        bounds = [(int(cu[i]), int(cu[i + 1])) for i in range(len(seg))]
        for L in lens:
            idx = [b for b in bounds if b[1] - b[0] == L]
            rows = torch.cat([torch.arange(a, b, device=h.device) for a, b in idx])
            qq = q[rows].view(len(idx), L, attn.num_heads, -1).transpose(1, 2)
            kk = k[rows].view(len(idx), L, attn.num_heads, -1).transpose(1, 2)
            rec[rows] = received_attention(qq, kk, attn.scaling).reshape(-1)
        unit = visual.spatial_merge_size ** 2
        window_index, _ = get_vision_window_index(grid, spatial_merge_size=visual.spatial_merge_size,
                                                  window_size=visual.window_size, patch_size=visual.patch_size)
        reverse = torch.argsort(window_index.to(h.device))
        sal = rec.view(S // unit, unit).sum(-1)[reverse]
        keys = k_raw.float().mean(dim=1).view(S // unit, unit, -1).mean(1)[reverse]
        T = int(grid[0, 0])
        sal = sal.view(T, -1)
        sal = sal / sal.sum(dim=-1, keepdim=True)
        return sal, keys.view(T, sal.shape[1], -1)

    # ---------------------------------------------------------------- splice + positions
    def full_position_ids(self, inputs: dict) -> torch.Tensor:
        """(3, 1, L) M-RoPE ids of the uncompressed sequence by the original rule (`mrope_position_ids`)."""
        cfg = self.model.config
        pos = mrope_position_ids(inputs["input_ids"][0], inputs["video_grid_thw"], inputs["second_per_grid_ts"],
                                 video_token_id=cfg.video_token_id,
                                 spatial_merge_size=cfg.vision_config.spatial_merge_size,
                                 tokens_per_second=cfg.vision_config.tokens_per_second)
        return pos[:, None]

    def splice(self, inputs: dict, video: VideoTokens, out: CompressedTokens) -> Prepared:
        ids = inputs["input_ids"][0]
        vid = (ids == self.model.config.video_token_id).nonzero().flatten()
        s, e = int(vid[0]), int(vid[-1]) + 1
        if e - s != video.num_frames * video.tokens_per_frame:
            raise ValueError("input_ids: video placeholder span does not match the encoded grid")
        pos = self.full_position_ids(inputs)
        embed = self.language_model().get_input_embeddings()
        text = embed(ids[None])
        flat = out.flat_index(video.grid_hw).to(ids.device)
        feats = out.features.to(text.dtype)[None]
        embeds = torch.cat([text[:, :s], feats, text[:, e:]], dim=1)
        keep = torch.cat([torch.arange(s, device=ids.device), s + flat, torch.arange(e, len(ids), device=ids.device)])
        position_ids = pos[:, :, keep]
        return Prepared(inputs_embeds=embeds, position_ids=position_ids, next_position=int(pos.max()) + 1,
                        video=video, compressed=out, input_ids=inputs["input_ids"],
                        extras={"keep_index": keep, "video_span": (s, e), "full_position_ids": pos})

    def eos_token_ids(self) -> list[int]:
        """The official wrapper passes `eos_token_id=tokenizer.eos_token_id` (<|im_end|>) to `generate`."""
        return [int(self.tokenizer.eos_token_id)]

    def decode_positions(self, p: int) -> torch.Tensor:
        return torch.full((3, 1, 1), p, dtype=torch.long, device=self.device)
