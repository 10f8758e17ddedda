"""LLaVA-OneVision and LLaVA-Video adapters (transformers `LlavaOnevisionForConditionalGeneration`).

Both use SigLIP (the HF tower keeps the layers LLaVA uses; features = `hidden_states[vision_feature_layer]`),
an MLP projector and a Qwen2 LLM with 1-D positions. Per frame:
- LLaVA-OV: 27x27 -> bilinear 14x14 (196 tokens), one `image_newline` after the whole video.
- LLaVA-Video: 27x27 -> 2x2 average pool 13x13 (169 tokens), an `image_newline` after every grid row,
  and the frame-time instruction in the prompt.

Saliency: the selected SigLIP layer's self-attention (recomputed from that layer's input with its q/k
projections, softmax in float32, query-chunked), averaged over heads and queries = attention each
patch receives, pooled to the LLM grid with the same pooling as the features, normalised to sum 1
per frame. encoder_features: that layer's keys averaged over heads, pooled the same way.
frame_features: SigLIP's attention-pooling (MAP) head applied to post-layernorm features of the
selected layer, when the tower has a head (tiny builds) or one is loaded with `siglip_head=<path>`
(the official FastVID/UniComp glue loads it from `google/siglip-so400m-patch14-384`); otherwise the
documented substitute: attention-weighted mean of the selected layer's features (the un-pooled
saliency as the pooling weights, i.e. a single-probe attention pooling without learned weights).

Positions: sequence order (1-D `arange`), newline tokens placed from the kept (t,h,w) positions.

Input protocol = the official OTT-Vid wrappers (`lmms_eval_wrappers/llava_onevision.py`, `llava_vid.py`;
docs/protocol.md): decord frames at `np.linspace(0, n - 1, F, dtype=int)` (LLaVA-Video: its `load_video`,
64 frames force-sampled, or 1 fps up to F frames with `force_sample=False`), LLaVA-NeXT's SigLIP
preprocessing (PIL bicubic resize), fp16 on CUDA, and the
prompt LLaVA-NeXT renders with the `qwen_1_5` conversation: `<image>\n` (LLaVA-NeXT's placeholder for
the whole video, the processor's `<video>` token here) before the question, LLaVA-Video's time
instruction between them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import CompressedTokens, VideoTokens
from .common import Adapter, Prepared, read_defaults, received_attention
from .video import Frames, load_frames

PROTOCOL_OV = {"max_frames_num": 32, "system_prompt": "You are a helpful assistant."}
# LLaVA-Video: the paper's 64 frames, force-sampled uniformly, with the time instruction (as LLaVA-Video was
# trained and as the fixtures' official run); `force_sample=False` is the wrapper's 1 fps path (`video_fps`).
PROTOCOL_VIDEO = {"max_frames_num": 64, "system_prompt": "You are a helpful assistant.", "force_sample": True,
                  "time_instruction": True, "video_fps": 1}
IMAGE_PLACEHOLDER = "<image>"  # LLaVA-NeXT's DEFAULT_IMAGE_TOKEN: where the video's tokens go in the prompt


def llava_video_sampling(total: int, avg_fps: float, max_frames: int, fps: float = 1,
                         force_sample: bool = True) -> tuple[list[int], str, float]:
    """Frame indices, frame-time text and video length as LLaVA-Video's `load_video` computes them.

    Every `round(avg_fps / fps)`-th frame, or `np.linspace(0, total - 1, max_frames, dtype=int)` when that
    gives more than `max_frames` frames or `force_sample`. Times are `index / avg_fps` for the uniform
    frames and, as the official code writes them, `index / step` for the strided ones.
    """
    if total <= 0 or avg_fps <= 0:
        raise ValueError(f"video: no frames or no frame rate (frames={total}, fps={avg_fps})")
    step = round(avg_fps / fps)
    if step < 1:
        raise ValueError(f"video_fps: {fps} is above the video's frame rate {avg_fps}")
    idx = list(range(0, total, step))
    times = [i / step for i in idx]
    if len(idx) > max_frames or force_sample:
        idx = np.linspace(0, total - 1, max_frames, dtype=int).tolist()
        times = [i / avg_fps for i in idx]
    return idx, ",".join(f"{t:.2f}s" for t in times), total / avg_fps


@dataclass
class LlavaVideoFrames(Frames):
    """Frames plus the frame-time text LLaVA-Video's `load_video` writes ("0.00s,0.13s,...")."""

    frame_time: str = ""


def time_instruction(frames: Frames, frame_time: str) -> str:
    """LLaVA-Video's frame-time instruction (official wrapper, `add_time_instruction=True`)."""
    return (f"The video lasts for {frames.duration:.2f} seconds, and {len(frames.indices)} frames are uniformly "
            f"sampled from it. These frames are located at {frame_time}.Please answer the following questions "
            f"related to this video.")


HOW_TO_GET_OV = ("download it with `huggingface-cli download llava-hf/llava-onevision-qwen2-7b-ov-hf` on a machine "
                 "with network access (or pass a local path), or use backbone=tiny_llava_onevision")
HOW_TO_GET_VIDEO = ("download `lmms-lab/LLaVA-Video-7B-Qwen2` (`huggingface-cli download lmms-lab/LLaVA-Video-7B-Qwen2`); "
                    "it is converted on first use (or once by hand: `python -m ottvid.backbones.llava_video convert "
                    "--src <dir> --out <dir>`); or use backbone=tiny_llava_video")


class LlavaOnevisionAdapter(Adapter):
    family = "llava_onevision"
    pool_mode = "bilinear"
    newline_position = "one_token"
    protocol = PROTOCOL_OV
    _siglip_pil = None  # transformers' PIL SigLIP processor, built on first use from the video processor's settings

    @classmethod
    def from_pretrained(cls, path: Path, device: str, dtype: torch.dtype, method: str, hparams: dict,
                        overrides: dict | None = None, attn_implementation: str | None = None,
                        siglip_head: str | None = None):
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

        d = read_defaults(path, cls.protocol)
        d.update({k: v for k, v in (overrides or {}).items() if v is not None})
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=dtype, **kw).to(device)
        cls._check_config(model.config, path)
        proc = AutoProcessor.from_pretrained(path)
        ad = cls(model, proc, path, method, hparams, d)
        ad.pool_head = None
        if siglip_head:
            ad.pool_head = load_siglip_head(siglip_head, device, dtype)
        return ad

    @classmethod
    def _check_config(cls, config, path: Path) -> None:
        if getattr(config, "ottvid_llava_video", None):
            raise ValueError(f"pretrained: {path} is a converted LLaVA-Video checkpoint; use ottvid_llava_video")

    # ---------------------------------------------------------------- inputs
    def load(self, video_path: str) -> Frames:
        """The official `load_video`: decord, `np.linspace(0, n - 1, 32, dtype=int)`."""
        return load_frames(video_path, num_frames=int(self.defaults["max_frames_num"]))

    def prompt(self, frames: Frames, question: str) -> str:
        """The prompt LLaVA-NeXT renders (`qwen_1_5` conversation, the format both checkpoints were trained
        with): `<image>\n` + question as the user turn (no prefix when the question already has `<image>`)."""
        q = question if IMAGE_PLACEHOLDER in question else f"{IMAGE_PLACEHOLDER}\n{question}"
        return self._conversation(q)

    def _conversation(self, user: str) -> str:
        sys = self.defaults.get("system_prompt")
        head = f"<|im_start|>system\n{sys}<|im_end|>\n" if sys else ""
        return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"

    def build_inputs(self, frames: Frames, question: str) -> dict:
        text = self.prompt(frames, question)
        if text.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"question: one video per sample, but the prompt has {text.count(IMAGE_PLACEHOLDER)} "
                             f"{IMAGE_PLACEHOLDER} placeholders")
        hf_text = text.replace(IMAGE_PLACEHOLDER, self.processor.video_token)
        inputs = self.processor(text=[hf_text], videos=[frames.pixels], return_tensors="pt")
        pv = self.siglip_pixels(frames.pixels)
        if pv.shape != inputs["pixel_values_videos"].shape[1:]:
            raise ValueError(f"pixel_values_videos: SigLIP preprocessing gave {tuple(pv.shape)}, the processor "
                             f"{tuple(inputs['pixel_values_videos'].shape[1:])}")
        inputs["pixel_values_videos"] = pv[None]
        inputs["prompt"] = text
        return inputs.to(self.device)

    def siglip_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) float32 as LLaVA-NeXT's `SigLipImageProcessor` makes them:
        PIL bicubic resize to S x S, rescale, normalise (transformers' PIL SigLIP processor; the video
        processor's torchvision resize differs by one uint8 level on ~0.1% of the pixels)."""
        if self._siglip_pil is None:
            from transformers import SiglipImageProcessorPil

            vp = self.processor.video_processor
            self._siglip_pil = SiglipImageProcessorPil(
                size={"height": vp.size["height"], "width": vp.size["width"]}, image_mean=list(vp.image_mean),
                image_std=list(vp.image_std), rescale_factor=vp.rescale_factor)
        return self._siglip_pil(images=list(pixels), return_tensors="pt")["pixel_values"]

    # ---------------------------------------------------------------- encoding
    def _layer_index(self) -> int:
        vfl = self.model.config.vision_feature_layer
        if not isinstance(vfl, int):
            raise ValueError("vision_feature_layer: a single layer is required")
        n = len(self.model.model.vision_tower.encoder.layers)
        k = vfl % (n + 1)
        if k == 0:
            raise ValueError("vision_feature_layer: the embedding output has no attention")
        return k - 1

    def pool(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """(B, side*side, C) on the SigLIP grid -> (B, N, C) on the LLM grid, as the model pools features."""
        B, P, C = x.shape
        g = x.view(B, side, side, C).permute(0, 3, 1, 2)
        if self.pool_mode == "bilinear":
            g = F.interpolate(g, size=[math.ceil(side / 2), math.ceil(side / 2)], mode="bilinear")
        else:
            g = F.avg_pool2d(g, kernel_size=2, stride=2)
        return g.permute(0, 2, 3, 1).reshape(B, -1, C)

    def encode(self, inputs: dict, frames: Frames) -> VideoTokens:
        m = self.model.model
        tower = m.vision_tower
        pv = inputs["pixel_values_videos"]
        B, T = pv.shape[:2]
        if B != 1:
            raise ValueError("pixel_values_videos: one video per sample is supported")
        layer = tower.encoder.layers[self._layer_index()]
        cap = {}

        def hook(mod, args, kwargs):
            cap["h"] = args[0] if args else kwargs["hidden_states"]

        handle = layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            out = tower(pv.view(T, *pv.shape[2:]).to(self.dtype), output_hidden_states=True, return_dict=True)
        finally:
            handle.remove()
        sel = out.hidden_states[self.model.config.vision_feature_layer]        # (T, P, C)
        if self.model.config.vision_feature_select_strategy == "default":
            raise ValueError("vision_feature_select_strategy: 'default' (CLS drop) is not used by SigLIP LLaVA")
        side = int(math.isqrt(sel.shape[1]))
        feats = self.pool(m.multi_modal_projector(sel), side)                 # (T, N, D)
        attn = layer.self_attn
        h = cap["h"]
        q = attn.q_proj(h).view(T, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(T, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
        rec = received_attention(q, k, attn.scale)                             # (T, P), rows sum to 1
        sal = self.pool(rec[..., None], side)[..., 0]
        sal = sal / sal.sum(-1, keepdim=True)
        keys = self.pool(k.float().mean(dim=1), side)                          # (T, N, head_dim)
        frame = self.frame_features(sel, rec)
        n = feats.shape[1]
        hw = int(math.isqrt(n))
        ts = torch.tensor(frames.timestamps, dtype=torch.float32, device=feats.device)
        return VideoTokens(features=feats, grid_hw=(hw, hw), saliency=sal, encoder_features=keys.to(feats.dtype),
                           frame_features=frame.to(feats.dtype), timestamps=ts if ts.numel() == T else None)

    def frame_features(self, sel: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        """(T, C) global frame embedding: SigLIP MAP head if available, else the attention-weighted mean."""
        tower = self.model.model.vision_tower
        head = self.pool_head
        if head is None and getattr(tower, "head", None) is not None and self.model.config.vision_config.vision_use_head:
            head = (tower.post_layernorm, tower.head)
        if head is not None:
            ln, mha = head
            return mha(ln(sel))
        return torch.einsum("tp,tpc->tc", rec, sel.float())

    # ---------------------------------------------------------------- splice
    def visual_sequence(self, out: CompressedTokens, num_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Compressed tokens with this model's newline tokens; also returns which rows are newlines.

        one_token (LLaVA-OV): one `image_newline` after the video. grid (LLaVA-Video), as the official
        compressed LLaVA-Video path places them: a newline after every run of consecutive tokens in the
        same (t, h) row, and a frame of the `num_frames` left with no token at all still gets one newline,
        where its tokens would have been.
        """
        nl = self.model.model.image_newline.to(out.features.dtype)
        dev = out.features.device
        if self.newline_position == "one_token":
            seq = torch.cat([out.features, nl[None]], dim=0)
            is_nl = torch.zeros(seq.shape[0], dtype=torch.bool, device=dev)
            is_nl[-1] = True
            return seq, is_nl
        p = out.positions.to(dev)
        M = out.count
        t = p[:, 0]
        row = t * (p[:, 1].max() + 1 if M else 1) + p[:, 1]
        end = torch.ones_like(row, dtype=torch.bool)
        end[:-1] = row[1:] != row[:-1]
        # order keys: token i -> 3i, the row newline after it -> 3i + 1, the newline of an empty frame f
        # -> 3k - 1 with k the number of tokens before frame f (frames ordered by their running maximum)
        T = int(num_frames) if num_frames is not None else (int(t.max()) + 1 if M else 0)
        present = torch.zeros(T, dtype=torch.bool, device=dev)
        present[t[t < T]] = True
        empty = (~present).nonzero().flatten()
        before = torch.searchsorted(torch.cummax(t, 0).values.contiguous(), empty.contiguous(), right=False) if M \
            else torch.zeros_like(empty)
        i = torch.arange(M, device=dev)
        keys = torch.cat([3 * i, 3 * i[end] + 1, 3 * before - 1])
        items = torch.cat([out.features, nl.expand(int(end.sum()) + empty.numel(), -1)])
        is_nl = torch.cat([torch.zeros(M, dtype=torch.bool, device=dev),
                           torch.ones(int(end.sum()) + empty.numel(), dtype=torch.bool, device=dev)])
        order = torch.sort(keys, stable=True).indices
        return items[order], is_nl[order]

    def splice(self, inputs: dict, video: VideoTokens, out: CompressedTokens) -> Prepared:
        ids = inputs["input_ids"][0]
        vid = (ids == self.model.config.video_token_id).nonzero().flatten()
        s, e = int(vid[0]), int(vid[-1]) + 1
        embed = self.language_model().get_input_embeddings()
        text = embed(ids[None])
        seq, is_nl = self.visual_sequence(out, video.num_frames)
        embeds = torch.cat([text[:, :s], seq.to(text.dtype)[None], text[:, e:]], dim=1)
        L = embeds.shape[1]
        pos = torch.arange(L, device=ids.device)[None]
        return Prepared(inputs_embeds=embeds, position_ids=pos, next_position=L, video=video, compressed=out,
                        extras={"video_span": (s, s + seq.shape[0]), "newline_mask": is_nl})

    def decode_positions(self, p: int) -> torch.Tensor:
        return torch.tensor([[p]], dtype=torch.long, device=self.device)


class LlavaVideoAdapter(LlavaOnevisionAdapter):
    """LLaVA-Video-7B-Qwen2 converted into the LLaVA-OneVision class (see llava_video.py)."""

    family = "llava_video"
    pool_mode = "average"
    newline_position = "grid"
    protocol = PROTOCOL_VIDEO

    def load(self, video_path: str) -> Frames:
        """The official LLaVA-Video `load_video` (decord, one thread): `llava_video_sampling`."""
        from decord import VideoReader, cpu

        d = self.defaults
        vr = VideoReader(str(video_path), ctx=cpu(0), num_threads=1)
        total, avg_fps = len(vr), float(vr.get_avg_fps())
        idx, frame_time, _ = llava_video_sampling(total, avg_fps, int(d["max_frames_num"]), float(d["video_fps"]),
                                                  bool(d["force_sample"]))
        return LlavaVideoFrames(pixels=vr.get_batch(idx).asnumpy(), indices=idx, timestamps=[i / avg_fps for i in idx],
                                native_fps=avg_fps, total_frames=total, frame_time=frame_time)

    def prompt(self, frames: Frames, question: str) -> str:
        """`<image>\n` + the time instruction (`time_instruction=True`) + `\n` + question, as the official
        wrapper writes it, in the `qwen_1_5` conversation."""
        q = question
        if self.defaults.get("time_instruction", True):
            ft = getattr(frames, "frame_time", None) or ",".join(f"{t:.2f}s" for t in frames.timestamps)
            q = f"{time_instruction(frames, ft)}\n{q}"
        return self._conversation(f"{IMAGE_PLACEHOLDER}\n{q}")

    @classmethod
    def _check_config(cls, config, path: Path) -> None:
        block = getattr(config, "ottvid_llava_video", None)
        if not block:
            raise ValueError(f"pretrained: {path} is not a converted LLaVA-Video checkpoint; {HOW_TO_GET_VIDEO}")
        if block.get("spatial_pool_mode") != "average" or block.get("newline_position") != "grid":
            raise ValueError(f"pretrained: unsupported LLaVA-Video settings {block}")


def load_siglip_head(path: str, device: str, dtype: torch.dtype):
    """(post_layernorm, MAP head) of an original SigLIP checkpoint (e.g. google/siglip-so400m-patch14-384)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from .common import resolve_checkpoint

    local = resolve_checkpoint(path, "download google/siglip-so400m-patch14-384 or pass a local SigLIP checkpoint")
    cfg = SiglipVisionConfig.from_pretrained(local)
    cfg.vision_use_head = True
    vm = SiglipVisionModel.from_pretrained(local, config=cfg, dtype=dtype)
    return (vm.post_layernorm.to(device).eval(), vm.head.to(device).eval())
