"""Backbone adapters on the tiny offline models: equivalence with the unmodified transformers
models, position preservation under token dropping, saliency against a direct recomputation."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ottvid.backbones import load_backbone
from ottvid.backbones.tiny import build_tiny
from ottvid.contract import CompressedTokens

VIDEO = str(Path(__file__).parent / "data" / "moving_square.mp4")
Q = "Which way does the yellow square move? Answer A or B."


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def adapters(tiny_dir):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_backbone(family, build_tiny(family, tiny_dir), method="vanilla", device="cpu",
                                          dtype="float32")
        return cache[family]

    return get


def _hf_inputs(ad):
    frames = ad.load(VIDEO)
    inp = ad.build_inputs(frames, Q)
    return frames, {k: v for k, v in inp.items() if k != "prompt"}


def test_vanilla_matches_unmodified_llava_onevision(adapters):
    ad = adapters("llava_onevision")
    text, stats = ad.generate(VIDEO, Q, max_new_tokens=4)
    _, inp = _hf_inputs(ad)
    g = ad.model.generate(**inp, max_new_tokens=4, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, eos_token_id=None)
    ref_ids = g.sequences[0, inp["input_ids"].shape[1]:].tolist()
    assert stats["generated_ids"] == ref_ids[:len(stats["generated_ids"])]
    ref_logits = torch.stack([x[0] for x in g.logits]).float()[:len(stats["generated_ids"])]
    torch.testing.assert_close(ad.last_logits, ref_logits, rtol=0, atol=1e-5)
    assert stats["tokens_in"] == stats["tokens_out"] > 0


def _original_mrope(ids: torch.Tensor, grid: torch.Tensor, second_per_grid_t: float, cfg) -> torch.Tensor:
    """(3, L) ids written out independently by the original rule: text 0..s-1, video (s + t*spg*tps, s+h, s+w),
    text after the video from (largest video id + 1)."""
    vid = (ids == cfg.video_token_id).nonzero().flatten()
    s, e = int(vid[0]), int(vid[-1]) + 1
    T, gh, gw = int(grid[0, 0]), int(grid[0, 1]) // 2, int(grid[0, 2]) // 2
    rows = []
    for t in range(T):
        for h in range(gh):
            for w in range(gw):
                rows.append([s + int(t * second_per_grid_t * cfg.vision_config.tokens_per_second), s + h, s + w])
    vpos = torch.tensor(rows).T
    nxt = int(vpos.max()) + 1
    head = torch.arange(s).expand(3, -1)
    tail = torch.arange(len(ids) - e).expand(3, -1) + nxt
    return torch.cat([head, vpos, tail], dim=1)


def test_vanilla_matches_unmodified_qwen_forward(adapters):
    """Qwen2.5-VL vanilla == the unmodified model's own forward (its vision path and embedding merge) with
    position ids by the original M-RoPE rule, greedy step by step without a cache, under the checkpoint's
    generation rule."""
    ad = adapters("qwen2_5_vl")
    text, stats = ad.generate(VIDEO, Q, max_new_tokens=4)
    _, inp = _hf_inputs(ad)
    ids = inp["input_ids"]
    pos = _original_mrope(ids[0], inp["video_grid_thw"], float(inp["second_per_grid_ts"][0]), ad.model.config)[:, None]
    procs = ad.logits_processor(ids.shape[1])
    nxt = int(pos.max()) + 1
    ref_ids, ref_logits = [], []
    with torch.no_grad():
        for step in range(len(stats["generated_ids"])):
            o = ad.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos,
                         pixel_values_videos=inp["pixel_values_videos"], video_grid_thw=inp["video_grid_thw"])
            logits = o.logits[0, -1].float()
            tok = int(procs(ids, logits[None])[0].argmax())
            ref_ids.append(tok)
            ref_logits.append(logits)
            ids = torch.cat([ids, ids.new_tensor([[tok]])], dim=1)
            pos = torch.cat([pos, torch.full((3, 1, 1), nxt + step, dtype=pos.dtype)], dim=2)
    assert stats["generated_ids"] == ref_ids
    # cached (adapter) vs uncached (reference) attention sums differ by ~1e-5; a wrong position moves logits by ~1
    torch.testing.assert_close(ad.last_logits, torch.stack(ref_logits), rtol=0, atol=1e-4)
    assert stats["tokens_in"] == stats["tokens_out"] > 0
    assert stats["prompt_text"].endswith(f"{Q}<|im_end|>\n<|im_start|>assistant\n")


def test_vanilla_matches_llava_video_reference(adapters):
    """LLaVA-Video has no transformers video path: the reference is built from the unmodified modules
    (tower, projector, 2x2 average pool, newline per grid row) and run through HF `generate`."""
    ad = adapters("llava_video")
    text, stats = ad.generate(VIDEO, Q, max_new_tokens=4)
    frames, inp = _hf_inputs(ad)
    m = ad.model.model
    pv = inp["pixel_values_videos"][0]
    hs = m.vision_tower(pv, output_hidden_states=True).hidden_states[ad.model.config.vision_feature_layer]
    x = m.multi_modal_projector(hs)
    T, P, D = x.shape
    s = int(math.isqrt(P))
    x = F.avg_pool2d(x.view(T, s, s, D).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)   # (T, h, w, D)
    h = x.shape[1]
    nl = m.image_newline.view(1, 1, 1, D).expand(T, h, 1, D)
    vis = torch.cat([x, nl], dim=2).reshape(-1, D)
    assert vis.shape[0] == T * h * (h + 1)
    ids = inp["input_ids"][0]
    v = (ids == ad.model.config.video_token_id).nonzero().flatten()
    emb = m.get_input_embeddings()(ids[None])
    embeds = torch.cat([emb[:, : v[0]], vis[None], emb[:, v[-1] + 1:]], dim=1)
    g = ad.model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                          max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
                          eos_token_id=None)
    n = len(stats["generated_ids"])
    assert stats["generated_ids"] == g.sequences[0].tolist()[:n]
    torch.testing.assert_close(ad.last_logits, torch.stack([x[0] for x in g.logits]).float()[:n], rtol=0, atol=1e-5)
    # the frame-time instruction of LLaVA-Video is in the prompt
    assert f"{len(frames.indices)} frames are uniformly sampled" in ad.build_inputs(frames, Q)["prompt"]


def _drop(video, keep_every=3):
    """Keep a deterministic subset of tokens (every `keep_every`-th slot), in raster order."""
    T, N, D = video.features.shape
    pos = video.grid_positions().reshape(T * N, 3)
    sel = torch.arange(0, T * N, keep_every)
    return CompressedTokens(features=video.features.reshape(T * N, D)[sel], positions=pos[sel]), sel


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_dropping_equals_masking(adapters, family):
    """Adapter with tokens dropped == full sequence with those tokens masked out of attention."""
    ad = adapters(family)
    frames, inp = _hf_inputs(ad)
    with torch.no_grad():
        video = ad.encode(inp, frames)
        out, sel = _drop(video)
        prep = ad.splice(inp, video, out)
        logits, _ = ad.prefill(prep)
        # reference: the unmodified full sequence, dropped visual tokens masked in a 2-D attention mask
        full = ad.splice(inp, video, ad.compressor(video))
        ids = inp["input_ids"][0]
        s = int((ids == ad.model.config.video_token_id).nonzero()[0])
        mask = torch.ones(1, full.inputs_embeds.shape[1], dtype=torch.long)
        n = video.num_frames * video.tokens_per_frame
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[sel] = False
        mask[0, s:s + n][dropped] = 0
        if family == "qwen2_5_vl":
            pos = full.position_ids             # original M-RoPE ids: kept tokens keep theirs
        else:
            pos = (mask.cumsum(-1) - 1).clamp_min(0)   # sequence order of the kept tokens
        o = ad.language_model()(inputs_embeds=full.inputs_embeds, position_ids=pos, attention_mask=mask)
        ref = ad.model.lm_head(o.last_hidden_state[:, -1])[0].float()
    assert prep.inputs_embeds.shape[1] == full.inputs_embeds.shape[1] - int(dropped.sum())
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_qwen_positions_follow_tokens(adapters):
    ad = adapters("qwen2_5_vl")
    frames, inp = _hf_inputs(ad)
    with torch.no_grad():
        video = ad.encode(inp, frames)
        out, sel = _drop(video, keep_every=5)
        prep = ad.splice(inp, video, out)
    full = prep.extras["full_position_ids"]
    s, e = prep.extras["video_span"]
    M = out.count
    torch.testing.assert_close(prep.position_ids[:, :, s:s + M], full[:, :, s + sel])
    torch.testing.assert_close(prep.position_ids[:, :, s + M:], full[:, :, e:])
    assert prep.next_position == int(full.max()) + 1


def test_llava_video_grid_newlines(adapters):
    ad = adapters("llava_video")
    frames, inp = _hf_inputs(ad)
    with torch.no_grad():
        video = ad.encode(inp, frames)
        out, sel = _drop(video, keep_every=7)
        seq, is_nl = ad.visual_sequence(out)
    rows = {(int(t), int(h)) for t, h, _ in out.positions.tolist()}
    assert int(is_nl.sum()) == len(rows)                 # one newline per present (t, h) row
    assert bool(is_nl[-1]) and not bool(is_nl[0])
    torch.testing.assert_close(seq[~is_nl], out.features)


def _siglip_direct(ad, inp):
    tower = ad.model.model.vision_tower
    ad_layer = ad._layer_index()
    pv = inp["pixel_values_videos"][0]
    tower.config._attn_implementation = "eager"
    try:
        o = tower(pv, output_attentions=True, output_hidden_states=True)
    finally:
        tower.config._attn_implementation = "sdpa"
    a = o.attentions[ad_layer].float().mean(1).mean(1)          # (T, P) received attention
    s = int(math.isqrt(a.shape[1]))
    return a, s


@pytest.mark.parametrize("family", ["llava_onevision", "llava_video"])
def test_saliency_llava_matches_direct_attention(adapters, family):
    ad = adapters(family)
    frames, inp = _hf_inputs(ad)
    with torch.no_grad():
        video = ad.encode(inp, frames)
        a, s = _siglip_direct(ad, inp)
    g = a.view(-1, 1, s, s)
    if family == "llava_onevision":
        g = F.interpolate(g, size=[math.ceil(s / 2)] * 2, mode="bilinear")
    else:
        g = F.avg_pool2d(g, 2)
    ref = g.flatten(1)
    ref = ref / ref.sum(-1, keepdim=True)
    torch.testing.assert_close(video.saliency, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(video.saliency.sum(-1), torch.ones(video.num_frames))


def test_saliency_qwen_matches_direct_attention(adapters):
    """Recompute the last block's attention maps with transformers' own eager attention on each
    full-attention segment (the maps materialised), then reduce as PROTOCOL.md says."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision, eager_attention_forward
    from transformers.vision_utils import get_vision_window_index

    ad = adapters("qwen2_5_vl")
    frames, inp = _hf_inputs(ad)
    visual = ad.model.model.visual
    attn = visual.blocks[-1].attn
    assert len(visual.blocks) - 1 in visual.fullatt_block_indexes
    cap = {}
    h = attn.register_forward_pre_hook(lambda m, a, kw: cap.update(kw, h=a[0] if a else kw["hidden_states"]),
                                       with_kwargs=True)
    with torch.no_grad():
        try:
            visual(inp["pixel_values_videos"], grid_thw=inp["video_grid_thw"])
        finally:
            h.remove()
        video = ad.encode(inp, frames)
        x = cap["h"]
        S = x.shape[0]
        q, k, v = attn.qkv(x).reshape(S, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *cap["position_embeddings"])
        cu = cap["cu_seqlens"].tolist()
        rec = []
        for a, b in zip(cu[:-1], cu[1:]):
            qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
            _, w = eager_attention_forward(attn, qs, ks, vs, None, attn.scaling)
            rec.append(w[0].float().mean(0).mean(0))              # attention each patch receives
    T, gh, gw = (int(t) for t in inp["video_grid_thw"][0])
    assert len(rec) == T                                          # one full-attention segment per temporal step
    rec = torch.cat(rec)
    wi, _ = get_vision_window_index(inp["video_grid_thw"], spatial_merge_size=2, window_size=visual.window_size,
                                    patch_size=visual.patch_size)
    ref = rec.view(-1, 4).sum(-1)[torch.argsort(wi)].view(T, -1)
    ref = ref / ref.sum(-1, keepdim=True)
    torch.testing.assert_close(video.saliency, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(video.saliency.sum(-1), torch.ones(T))


def test_encoder_and_frame_features_shapes(adapters):
    for fam in ("qwen2_5_vl", "llava_onevision", "llava_video"):
        ad = adapters(fam)
        frames, inp = _hf_inputs(ad)
        with torch.no_grad():
            v = ad.encode(inp, frames)
        assert v.encoder_features.shape[:2] == v.features.shape[:2]
        assert v.frame_features.shape[0] == v.num_frames
        assert torch.isfinite(v.frame_features).all()
        assert v.num_frames >= 3 and v.tokens_per_frame >= 9


def test_ottvid_through_adapter_reduces_tokens(adapters):
    ad = adapters("qwen2_5_vl")
    ad.set_method("ottvid", retention=0.25)
    try:
        text, st = ad.generate(VIDEO, Q, max_new_tokens=2)
    finally:
        ad.set_method("vanilla")
    assert st["tokens_out"] < st["tokens_in"]
    assert st["method_stats"]
    for k in ("vision_ms", "compress_ms", "prefill_ms", "ttft_ms"):
        assert st[k] > 0


def test_bad_method_args_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="retention"):
        load_backbone("qwen2_5_vl", tmp_path / "missing", method="ottvid", retention=2.0)
    with pytest.raises(ValueError, match="unknown"):
        load_backbone("qwen2_5_vl", tmp_path / "missing", method="ottvid", bogus=1)


def test_missing_checkpoint_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_backbone("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct-not-cached", method="vanilla")
    with pytest.raises(FileNotFoundError, match="convert"):
        load_backbone("llava_video", tmp_path / "nope", method="vanilla")


def test_7b_needs_gpu(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 3584, "num_hidden_layers": 28,
                                                                      "vocab_size": 152064}}))
    with pytest.raises(RuntimeError, match="GPU"):
        load_backbone("qwen2_5_vl", tmp_path, method="vanilla", device="cpu")


def test_tiny_build_is_idempotent(tiny_dir):
    p = build_tiny("llava_onevision", tiny_dir)
    stamp = (p / "model.safetensors").stat().st_mtime_ns
    assert build_tiny("llava_onevision", tiny_dir) == p
    assert (p / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision", "llava_video"])
def test_cuda_bf16_smoke(tiny_dir, family):
    ad = load_backbone(family, build_tiny(family, tiny_dir), method="ottvid", retention=0.25, device="cuda",
                       dtype="bf16")
    assert ad.dtype == torch.bfloat16
    text, st = ad.generate(VIDEO, Q, max_new_tokens=3)
    assert st["tokens_out"] < st["tokens_in"] and st["peak_mem_gb"] > 0


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_video"])
def test_every_registered_method_runs(adapters, family):
    import ottvid

    ad = adapters(family)
    try:
        for m in ottvid.list_methods():
            if m == "vanilla":
                continue
            ad.set_method(m, retention=0.25)
            _, st = ad.generate(VIDEO, Q, max_new_tokens=1)
            assert 0 < st["tokens_out"] < st["tokens_in"], m
    finally:
        ad.set_method("vanilla")
