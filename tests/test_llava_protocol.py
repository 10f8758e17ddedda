"""LLaVA-OneVision / LLaVA-Video input protocol against the official wrappers' outputs
(tests/fixtures/protocol/llava/fixtures.json: decord frames, LLaVA-Video's time instruction, the
`qwen_1_5` prompts), the official compressed path's newline placement, fp16 defaults, and the
on-first-use conversion of the hub's original LLaVA-Video checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ottvid.backbones import load_backbone, official_dtype
from ottvid.backbones.llava import llava_video_sampling
from ottvid.backbones.tiny import build_original_llava_video, build_tiny
from ottvid.contract import CompressedTokens

PROTO = Path(__file__).parent / "fixtures" / "protocol"
FIX = json.loads((PROTO / "llava" / "fixtures.json").read_text())
QUESTIONS = FIX["about"]["questions"]
FAMILY = {"llava_onevision": "llava_onevision", "llava_vid": "llava_video"}
CASES = [(k, v) for k in FAMILY for v in FIX[k]]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_llava")
    cache = {}

    def get(fixture_family):
        if fixture_family not in cache:
            n = FIX["about"][fixture_family]["max_frames_num"]
            fam = FAMILY[fixture_family]
            cache[fixture_family] = load_backbone(fam, build_tiny(fam, root), device="cpu",
                                                  overrides={"max_frames_num": n})
        return cache[fixture_family]

    return get


@pytest.mark.parametrize("fam,case", CASES)
def test_frames_and_prompts_match_official(adapter, fam, case):
    exp = FIX[fam][case]
    ad = adapter(fam)
    frames = ad.load(str(PROTO / "videos" / exp["video"]))
    assert frames.indices == exp["frame_indices"]
    assert frames.total_frames == exp["total_frames"] and frames.native_fps == exp["avg_fps"]
    sums = frames.pixels.reshape(len(frames.indices), -1).astype(np.int64).sum(1).tolist()
    assert sums == exp["decoded_uint8_sum_per_frame"]
    assert list(frames.pixels.shape[1:]) == exp["frame_shape"]
    assert ad.prompt(frames, QUESTIONS["vqa"]) == exp["prompt_vqa"]
    assert ad.prompt(frames, QUESTIONS["vtg"]) == exp["prompt_vtg"]
    if fam == "llava_vid":
        assert frames.frame_time == exp["frame_time"]
        assert exp["time_instruction"] in exp["prompt_vqa"]
        assert abs(frames.duration - exp["video_time"]) < 1e-9


@pytest.mark.parametrize("case", sorted(FIX["llava_vid"]))
def test_llava_video_sampling_without_force_sample(case):
    """The wrapper's 1 fps path (`force_sample=False`), its frame-time text included."""
    exp = FIX["llava_vid"][case]
    n = FIX["about"]["llava_vid"]["max_frames_num"]
    idx, ft, length = llava_video_sampling(exp["total_frames"], exp["avg_fps"], n, 1, force_sample=False)
    assert idx == exp["force_sample_false"]["frame_indices"]
    assert ft == exp["force_sample_false"]["frame_time"]
    idx, ft, length = llava_video_sampling(exp["total_frames"], exp["avg_fps"], n, 1, force_sample=True)
    assert (idx, ft, length) == (exp["frame_indices"], exp["frame_time"], exp["video_time"])


@pytest.mark.parametrize("fam", sorted(FAMILY))
def test_prompt_tokens_are_the_video_placeholder(adapter, fam):
    """The rendered `<image>` placeholder becomes the processor's video tokens; the text around it is
    tokenized as LLaVA-NeXT's `tokenizer_image_token` does (the chunks around the placeholder, so the
    video token must not strip the newline after it)."""
    ad = adapter(fam)
    frames = ad.load(str(PROTO / "videos" / "v320x240_10fps_2s.mp4"))
    inp = ad.build_inputs(frames, QUESTIONS["vqa"])
    ids = inp["input_ids"][0].tolist()
    vid = ad.model.config.video_token_id
    first, last = ids.index(vid), len(ids) - 1 - ids[::-1].index(vid)
    assert set(ids[first:last + 1]) == {vid}
    before, after = inp["prompt"].split("<image>")
    tok = ad.tokenizer
    assert ids[:first] == tok(before, add_special_tokens=False)["input_ids"]
    assert ids[last + 1:] == tok(after, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="one video"):
        ad.build_inputs(frames, "<image> and <image>")


def _official_grid(features, positions, T, W, nl):
    """The official compressed LLaVA-Video path (`mm_newline_position='grid'`), written as loops: per
    anchor frame, tokens sorted by grid position, a newline after each row; an empty frame gets one."""
    out = []
    for f in range(T):
        m = positions[:, 0] == f
        if not m.any():
            out.append(nl[None])
            continue
        pos = positions[m, 1] * W + positions[m, 2]
        order = pos.argsort()
        chunk, pos = features[m][order], pos[order]
        rows = pos // W
        for r in rows.unique():
            out += [chunk[rows == r], nl[None]]
    return torch.cat(out)


def test_llava_video_newlines_follow_the_official_compressed_path(adapter):
    ad = adapter("llava_vid")
    D = ad.model.config.text_config.hidden_size
    T, H, W = 5, 4, 4
    g = torch.Generator().manual_seed(0)
    pos = torch.tensor([(t, h, w) for t in range(T) for h in range(H) for w in range(W)])
    keep = (torch.rand(len(pos), generator=g) < 0.3) & (pos[:, 0] != 1) & (pos[:, 0] != 4)  # frames 1, 4 empty
    keep[0] = True
    feats = torch.randn(len(pos), D, generator=g)[keep]
    out = CompressedTokens(features=feats, positions=pos[keep])
    nl = ad.model.model.image_newline.detach()
    seq, is_nl = ad.visual_sequence(out, T)
    ref = _official_grid(feats, pos[keep], T, W, nl)
    assert seq.shape == ref.shape
    torch.testing.assert_close(seq, ref, rtol=0, atol=0)
    torch.testing.assert_close(seq[~is_nl], feats)
    # every frame empty: one newline per frame
    none = CompressedTokens(features=feats[:0], positions=pos[:0])
    seq, is_nl = ad.visual_sequence(none, T)
    assert seq.shape[0] == T and bool(is_nl.all())


def test_llava_video_splice_counts_empty_frames(adapter):
    """Through the adapter: the spliced sequence has one newline per present row plus one per empty frame."""
    ad = adapter("llava_vid")
    frames = ad.load(str(PROTO / "videos" / "v320x240_10fps_2s.mp4"))
    inp = ad.build_inputs(frames, QUESTIONS["vqa"])
    with torch.no_grad():
        video = ad.encode(inp, frames)
        T, N, D = video.features.shape
        p = video.grid_positions().reshape(T * N, 3)
        sel = (p[:, 0] % 2 == 0).nonzero().flatten()                  # odd frames dropped entirely
        out = CompressedTokens(features=video.features.reshape(T * N, D)[sel], positions=p[sel])
        prep = ad.splice(inp, video, out)
    h = video.grid_hw[0]
    n_even = (T + 1) // 2
    assert int(prep.extras["newline_mask"].sum()) == n_even * h + (T - n_even)


def test_llava_family_defaults_to_fp16_on_cuda():
    import yaml

    assert official_dtype("llava_onevision", "cuda") == official_dtype("llava_video", "cuda:0") == torch.float16
    assert official_dtype("qwen2_5_vl", "cuda") == torch.bfloat16
    assert official_dtype("llava_video", "cpu") == torch.float32
    root = Path(__file__).parents[1] / "configs" / "backbone"
    for name in ("llava_ov_7b", "llava_video_7b"):
        assert yaml.safe_load((root / f"{name}.yaml").read_text())["dtype"] == "float16"
    with pytest.raises(ValueError, match="family"):
        official_dtype("llama", "cuda")


def _fake_hub(tmp_path) -> Path:
    """A Hugging Face cache holding a tiny original-layout `lmms-lab/LLaVA-Video-7B-Qwen2` snapshot."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lmms-lab--LLaVA-Video-7B-Qwen2"
    snap = build_original_llava_video(repo / "snapshots" / sha)
    gen = {"eos_token_id": 2, "repetition_penalty": 1.07, "max_new_tokens": 9}  # the hub's decoding defaults
    (snap / "generation_config.json").write_text(json.dumps(gen))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    return tmp_path / "hub"


def test_llava_video_hub_id_converts_on_first_use(tmp_path, monkeypatch, adapter):
    import huggingface_hub.constants as hc
    from safetensors.torch import load_file

    from ottvid.backbones import llava_video

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(_fake_hub(tmp_path)))
    conv = tmp_path / "converted"
    ad = load_backbone("llava_video", "lmms-lab/LLaVA-Video-7B-Qwen2", device="cpu", convert_dir=conv)
    (out,) = [p for p in conv.iterdir()]
    assert out.name.startswith("LLaVA-Video-7B-Qwen2-") and ad.path == out
    assert ad.model.config.ottvid_llava_video["newline_position"] == "grid"
    assert ad.model.generation_config.repetition_penalty == 1.07  # generation_config.json carried over
    # the same weights as the tiny build converted by hand
    ref = adapter("llava_vid")
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # reused, not redone
    stamp = (out / "model.safetensors").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(llava_video, "convert", boom)
    assert load_backbone("llava_video", "lmms-lab/LLaVA-Video-7B-Qwen2", device="cpu", convert_dir=conv).path == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    # the original checkpoint is not accepted by the OneVision adapter
    with pytest.raises(ValueError, match="only llava_video converts"):
        load_backbone("llava_onevision", "lmms-lab/LLaVA-Video-7B-Qwen2", device="cpu", convert_dir=conv)


def test_interrupted_conversion_leaves_nothing_to_load(tmp_path, monkeypatch):
    from ottvid.backbones import llava_video

    src = build_original_llava_video(tmp_path / "LLaVA-Video-7B-Qwen2")
    real = llava_video.convert

    def dies_half_way(s, o, **kw):
        real(s, o, **kw)
        (Path(o) / "model.safetensors").write_bytes(b"truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(llava_video, "convert", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        llava_video.ensure_converted(src, tmp_path / "conv")
    assert not any((tmp_path / "conv").iterdir())
    monkeypatch.setattr(llava_video, "convert", real)
    out = llava_video.ensure_converted(src, tmp_path / "conv")
    assert (out / "config.json").exists() and [p.name for p in (tmp_path / "conv").iterdir()] == [out.name]


def test_llava_video_protocol_options(tmp_path):
    """`force_sample=false` (the wrapper's 1 fps path) and `time_instruction=false` are backbone options."""
    from runners.lmms_models import OttvidLlavaVideo

    exp = FIX["llava_vid"]["v320x240_10fps_40s"]
    m = OttvidLlavaVideo(pretrained="tiny", cache_dir=str(tmp_path), device="cpu", max_frames_num="64",
                         force_sample="false", time_instruction="false")
    frames = m.adapter.load(str(PROTO / "videos" / exp["video"]))
    assert frames.indices == exp["force_sample_false"]["frame_indices"]
    assert m.adapter.prompt(frames, QUESTIONS["vqa"]) == FIX["llava_onevision"]["v320x240_10fps_40s"]["prompt_vqa"]


@pytest.mark.parametrize("video", ["v1280x720_30fps_10s", "v320x240_10fps_2s"])
def test_llava_pixels_follow_llava_next_siglip_preprocessing(adapter, video):
    """pixel_values_videos as LLaVA-NeXT's SigLIP processor computes them: per frame a PIL bicubic resize
    to S x S (transformers.image_transforms.resize), rescale by 1/255, normalise with mean = std = 0.5."""
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    ad = adapter("llava_onevision")
    frames = ad.load(str(PROTO / "videos" / f"{video}.mp4"))
    pv = ad.build_inputs(frames, QUESTIONS["vqa"])["pixel_values_videos"][0]
    S = ad.processor.video_processor.size["height"]
    first = ChannelDimension.FIRST
    ref = np.stack([normalize(rescale(resize(f, (S, S), resample=PILImageResampling.BICUBIC, data_format=first),
                                      1 / 255, data_format=first), [0.5] * 3, [0.5] * 3, data_format=first)
                    for f in frames.pixels])
    torch.testing.assert_close(pv, torch.from_numpy(ref), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fam", ["llava_onevision", "llava_video"])
def test_cuda_default_dtype_is_fp16(tmp_path, fam):
    ad = load_backbone(fam, build_tiny(fam, tmp_path), method="ottvid", retention=0.25, device="cuda")
    assert ad.dtype == torch.float16
    text, st = ad.generate(str(PROTO / "videos" / "v320x240_10fps_2s.mp4"), QUESTIONS["vqa"], max_new_tokens=3)
    assert st["tokens_out"] < st["tokens_in"]


@pytest.mark.parametrize("fam,case", CASES)
def test_inspect_prints_the_official_frames_and_prompt(fam, case, capsys):
    """`python -m ottvid.inspect --json` on a tiny LLaVA twin: the fixture's frames and rendered prompt."""
    from ottvid import inspect

    exp = FIX[fam][case]
    twin = {"llava_onevision": "tiny_llava_onevision", "llava_vid": "tiny_llava_video"}[fam]
    n = FIX["about"][fam]["max_frames_num"]
    assert inspect.main(["--backbone", twin, "--video", str(PROTO / "videos" / exp["video"]),
                         "--question", QUESTIONS["vqa"], "--max-frames", str(n), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["frame_indices"] == exp["frame_indices"]
    assert rec["prompt_text"] == exp["prompt_vqa"]
    assert rec["tokens"]["visual_in"] == rec["tokens"]["visual_out"]  # vanilla


@pytest.mark.parametrize("fam", ["llava_onevision", "llava_vid"])
def test_inspect_input_ids_cover_the_llm_sequence_newlines_included(adapter, fam, capsys):
    """With a compression method, every one of the L positions has an id, null at the newline embeddings."""
    from ottvid import inspect

    twin = {"llava_onevision": "tiny_llava_onevision", "llava_vid": "tiny_llava_video"}[fam]
    assert inspect.main(["--backbone", twin, "--video", str(PROTO / "videos" / "v320x240_10fps_2s.mp4"),
                         "--question", QUESTIONS["vqa"], "--max-frames", "4", "--method", "ottvid",
                         "--retention", "0.25", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    ids, t = rec["input_ids"], rec["tokens"]
    assert ids is not None and len(ids) == t["llm_input"] == len(rec["position_ids"])
    newlines = ids.count(None)
    assert newlines >= 1 and (fam == "llava_vid" or newlines == 1)   # LLaVA-OV: one after the video
    vid = adapter(fam).model.config.video_token_id
    assert ids.count(vid) == t["visual_out"]                       # one id per kept token
    first, last = ids.index(vid), len(ids) - 1 - ids[::-1].index(vid)
    assert all(i in (vid, None) for i in ids[first:last]) and ids[last + 1] is None   # the span ends in a newline
