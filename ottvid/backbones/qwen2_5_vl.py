"""Qwen2.5-VL adapter: compression between the patch merger and the LLM, 3-D M-RoPE kept per token.

Saliency (PROTOCOL.md): the last vision block's self-attention (a full-attention block in
Qwen2.5-VL-7B: `fullatt_block_indexes` ends with the last block), recomputed from the block's own
input with its q/k projections and vision RoPE, softmax per attention segment (one temporal grid
step), averaged over heads and queries = attention each patch receives; summed over each 2x2 merge
unit, put back in raster order, and normalised to sum 1 per temporal step. Only that layer's
q/k are captured (a forward hook on the block's attention), never attention maps of other layers.

encoder_features: the same block's keys before RoPE, averaged over heads and over the merge unit.
frame_features: Qwen2.5-VL has no pooling head; the substitute is the per-step mean of the merged
(LLM-space) tokens, which is what FastVID's own Qwen2.5-VL port uses as its frame embedding.

Positions: the official OTT-Vid code computes the uncompressed M-RoPE ids (`get_rope_index`) and
gathers the kept ones: each kept token keeps its (t,h,w) ids, a merged token its anchor's, text
tokens keep their uncompressed ids, decoding continues at max id + 1.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..contract import CompressedTokens, VideoTokens
from .common import Adapter, Prepared, read_defaults, received_attention
from .video import Frames, load_frames

# PROTOCOL.md: 32 uniform frames, dynamic resolution bounds of the official runs; VTG at 2 fps.
PROTOCOL = {"max_frames_num": 32, "min_pixels": 200704, "max_pixels": 1605632, "fps": None,
            "vtg_max_frames": 768, "system_prompt": "You are a helpful assistant."}
HOW_TO_GET = ("download it with `huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct` on a machine with "
              "network access (or pass a local path), or use backbone=tiny_qwen2_5_vl")


class Qwen25VLAdapter(Adapter):
    family = "qwen2_5_vl"

    @classmethod
    def from_pretrained(cls, path: Path, device: str, dtype: torch.dtype, method: str, hparams: dict,
                        overrides: dict | None = None, attn_implementation: str | None = None):
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        d = read_defaults(path, PROTOCOL)
        d.update({k: v for k, v in (overrides or {}).items() if v is not None})
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, **kw).to(device)
        proc = AutoProcessor.from_pretrained(path)
        proc.video_processor.size = {"shortest_edge": int(d["min_pixels"]), "longest_edge": int(d["max_pixels"])}
        # qwen-vl-utils (used by the official runs) also bounds the total video pixel budget per frame
        proc.video_processor.cap_pixels_per_frame = True
        return cls(model, proc, path, method, hparams, d)

    # ---------------------------------------------------------------- inputs
    def load(self, video_path: str) -> Frames:
        tp = self.model.config.vision_config.temporal_patch_size
        if self.defaults.get("fps"):
            return load_frames(video_path, fps=float(self.defaults["fps"]),
                               max_frames=int(self.defaults["vtg_max_frames"]), multiple=tp)
        return load_frames(video_path, num_frames=int(self.defaults["max_frames_num"]))

    def build_inputs(self, frames: Frames, question: str) -> dict:
        from transformers.video_utils import VideoMetadata

        msgs = []
        if self.defaults.get("system_prompt"):
            msgs.append({"role": "system", "content": self.defaults["system_prompt"]})
        msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]})
        text = self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        meta = VideoMetadata(total_num_frames=frames.total_frames, fps=frames.native_fps,
                             frames_indices=list(frames.indices))
        inputs = self.processor(text=[text], videos=[frames.pixels], video_metadata=[meta], do_sample_frames=False,
                                return_tensors="pt")
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
        """(3, 1, L) M-RoPE ids of the uncompressed sequence, as the unmodified model computes them."""
        pos, _ = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs.get("second_per_grid_ts"), attention_mask=inputs.get("attention_mask"))
        return pos

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
                        video=video, compressed=out,
                        extras={"keep_index": keep, "video_span": (s, e), "full_position_ids": pos})

    def decode_positions(self, p: int) -> torch.Tensor:
        return torch.full((3, 1, 1), p, dtype=torch.long, device=self.device)
