"""What the Qwen2.5-VL LLM receives equals the official OTT-Vid pipeline (tests/fixtures/protocol/).

Every case of `fixtures/protocol/qwen2_5_vl/fixtures/` (official wrapper on transformers 4.57.3 +
qwen-vl-utils 0.0.14, the tiny checkpoint `processor/` in float32), reproduced twice: through
`python -m ottvid.inspect --json` and through the adapter's own steps. Exact: frame indices,
resized size, grid, second_per_grid_ts, prompt text, input ids, (3, L) position ids, rope deltas,
decode positions. Pixels within 1e-3 (README "How to compare"). Greedy ids up to the first step
whose margin in `scores` is <= 1e-3; first-step logits within 1e-4.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ottvid.backbones import load_backbone
from ottvid.backbones.common import Timer
from ottvid.backbones.qwen2_5_vl import mrope_position_ids
from ottvid.backbones.video import subsample_positions, vqa_nframes

PROTO = Path(__file__).parent / "fixtures" / "protocol"
CKPT = PROTO / "qwen2_5_vl" / "processor"
CASES = sorted(p.stem for p in (PROTO / "qwen2_5_vl" / "fixtures").glob("*.pt"))
TINY_VIDEO = str(Path(__file__).parent / "data" / "moving_square.mp4")


def _fixture(case: str) -> dict:
    return torch.load(PROTO / "qwen2_5_vl" / "fixtures" / f"{case}.pt", weights_only=False)


def _overrides(p: dict) -> dict:
    if p["mode"] == "vtg":
        return {"fps": 2.0, "vtg_max_frames": p["max_num_frames"]}
    return {"max_frames_num": p["max_num_frames"]}


def _video(p: dict) -> str:
    return str(PROTO / "videos" / p["video"])


@pytest.fixture(scope="module")
def adapter_for():
    cache = {}

    def get(p: dict):
        key = json.dumps(_overrides(p), sort_keys=True)
        if key not in cache:
            cache[key] = load_backbone("qwen2_5_vl", CKPT, method="vanilla", device="cpu", dtype="float32",
                                       overrides=_overrides(p), attn_implementation="sdpa")
        return cache[key]

    return get


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_fixture_cases_present():
    assert len(CASES) == 7 and {c.split("__")[0] for c in CASES} == {"vqa32", "vtg32", "vtg768"}


@pytest.mark.parametrize("case", CASES)
def test_mrope_rule_equals_official_positions(case):
    """The project's M-RoPE function on the official input ids gives the official (3, L) ids exactly."""
    fx = _fixture(case)
    cfg = json.loads((CKPT / "config.json").read_text())
    pos = mrope_position_ids(fx["input_ids"], fx["video_grid_thw"], fx["second_per_grid_ts"],
                             video_token_id=cfg["video_token_id"], spatial_merge_size=2, tokens_per_second=2)
    assert torch.equal(pos, fx["position_ids"])
    assert int(pos.max()) + 1 - pos.shape[1] == int(fx["rope_deltas"])
    # text after the video continues at the largest video id + 1 (not transformers 5.x's start + max(h, w))
    vid = (fx["input_ids"] == cfg["video_token_id"]).nonzero().flatten()
    assert pos[:, int(vid[-1]) + 1].tolist() == [int(pos[:, vid].max()) + 1] * 3


def test_mrope_rule_rejects_mismatched_grid():
    ids = torch.tensor([1, 2, 9, 9, 9, 3])
    with pytest.raises(ValueError, match="video span"):
        mrope_position_ids(ids, torch.tensor([[2, 2, 2]]), [1.0], video_token_id=9, spatial_merge_size=2,
                           tokens_per_second=2)
    with pytest.raises(ValueError, match="video_grid_thw"):
        mrope_position_ids(ids, torch.tensor([[1, 2, 2], [1, 2, 2]]), [1.0], video_token_id=9,
                           spatial_merge_size=2, tokens_per_second=2)


def test_frame_count_rules():
    assert [vqa_nframes(n, 32) for n in (1, 2, 3, 20, 21, 31, 300)] == [2, 2, 2, 20, 20, 30, 32]
    assert subsample_positions(10, 32) == list(range(10))
    pos = subsample_positions(60, 32)
    assert len(pos) == 32 and pos[0] == 0 and pos[-1] == 59


def _check_inputs(rec: dict, fx: dict) -> None:
    assert rec["frame_indices"] == fx["frame_indices"]
    assert rec["decoded_frame_indices"] == fx["decoded_frame_indices"]
    assert rec["subsample_positions"] == fx["subsample_positions"]
    assert tuple(rec["resized_hw"]) == tuple(fx["resized_hw"])
    assert rec["video_grid_thw"] == fx["video_grid_thw"].tolist()
    assert rec["second_per_grid_ts"] == list(fx["second_per_grid_ts"])
    assert rec["prompt_text"] == fx["prompt_text"]
    assert rec["input_ids"] == fx["input_ids"].tolist()
    assert rec["position_ids"] == fx["position_ids"].tolist()
    assert rec["rope_deltas"] == int(fx["rope_deltas"])
    ref, pv = fx["pixel_values_videos"], rec["pixel_values_videos"]
    assert tuple(pv["shape"]) == tuple(ref["shape"])
    assert _rel(pv["sum"], ref["sum"]) < 1e-3 and _rel(pv["sumsq"], ref["sumsq"]) < 1e-3
    torch.testing.assert_close(torch.tensor(pv["sum_per_grid_t"], dtype=torch.float64),
                               ref["sum_per_grid_t"].double(), rtol=1e-3, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_inspect_cli_reproduces_official_inputs(case, capsys):
    from ottvid.inspect import main

    fx = _fixture(case)
    p = fx["params"]
    argv = ["--backbone", str(CKPT), "--video", _video(p), "--question", p["question"], "--mode", p["mode"],
            "--json"]
    if p["mode"] == "vtg":
        argv += ["--vtg-max-frames", str(p["max_num_frames"])]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check_inputs(rec, fx)
    assert rec["decode_start_position"] == int(fx["generation"]["decode_position_ids"][0].flatten()[0])
    assert rec["tokens"]["visual_in"] == rec["tokens"]["visual_out"] == fx["position_summary"]["n_video_tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_adapter_reproduces_official_run(case, adapter_for):
    """Inputs, pixels and the greedy decode (the checkpoint's generation rule) through the adapter's steps."""
    fx = _fixture(case)
    p = fx["params"]
    ad = adapter_for(p)
    frames = ad.load(_video(p))
    inputs = ad.build_inputs(frames, p["question"])
    pv = inputs["pixel_values_videos"]
    ref = fx["pixel_values_videos"]
    scale = float(ref["strided_values"].abs().max())
    assert float((pv.flatten()[ref["strided_index"]] - ref["strided_values"]).abs().max()) <= 1e-3 * scale
    timer = Timer(ad.device)
    with torch.no_grad():
        video = ad.encode(inputs, frames)
        prep = ad.splice(inputs, video, ad.compress(video))
    prep.extras.update(prompt=inputs["prompt"], frame_indices=list(frames.indices))
    rec = {"frame_indices": frames.indices, "decoded_frame_indices": frames.decoded_indices,
           "subsample_positions": frames.subsample_positions, "resized_hw": frames.resized_hw,
           "video_grid_thw": inputs["video_grid_thw"].tolist(),
           "second_per_grid_ts": inputs["second_per_grid_ts"].tolist(), "prompt_text": inputs["prompt"],
           "input_ids": inputs["input_ids"][0].tolist(), "position_ids": prep.position_ids[:, 0].tolist(),
           "rope_deltas": prep.next_position - prep.inputs_embeds.shape[1],
           "pixel_values_videos": {"shape": list(pv.shape), "sum": float(pv.double().sum()),
                                   "sumsq": float((pv.double() ** 2).sum()),
                                   "sum_per_grid_t": pv.double().view(int(inputs["video_grid_thw"][0, 0]), -1)
                                   .sum(1).tolist()}}
    _check_inputs(rec, fx)

    g = fx["generation"]
    n = len(g["generated_ids"])
    text, stats = ad.finish(prep, timer, max_new_tokens=n)
    ids = stats["generated_ids"]
    margins = g["margin_scores"]
    ok = next((i for i, m in enumerate(margins) if m <= 1e-3), len(margins))
    assert ids[:ok + 1] == g["generated_ids"].tolist()[:ok + 1]
    torch.testing.assert_close(ad.last_logits[0], g["first_step_logits"].float(), rtol=0, atol=1e-4)
    # the checkpoint's rule (repetition_penalty 1.05 under greedy): processed scores, not raw logits, rank tokens
    k = min(ok + 1, len(ids))
    torch.testing.assert_close(ad.last_scores[:k], g["scores"][:k].float(), rtol=0, atol=1e-4)
    assert [prep.next_position + i for i in range(len(ids) - 1)] == \
        [int(x.flatten()[0]) for x in g["decode_position_ids"][:len(ids) - 1]]
    assert stats["prompt_text"] == fx["prompt_text"]


def test_time_scale_option(tmp_path):
    """`time_scale=metadata`: seconds per grid step from the sampled frame rate; default: the official 1.0 s."""
    from ottvid.backbones.tiny import build_tiny

    ck = build_tiny("qwen2_5_vl", tmp_path)
    q = "What moves?"
    ads = {ts: load_backbone("qwen2_5_vl", ck, device="cpu", dtype="float32", overrides={"time_scale": ts})
           for ts in ("default", "metadata")}
    frames = ads["default"].load(TINY_VIDEO)
    tp = 2
    for ts, ad in ads.items():
        inp = ad.build_inputs(frames, q)
        s = float(inp["second_per_grid_ts"][0])
        want = tp / 2.0 if ts == "default" else tp / frames.sampled_fps
        assert s == pytest.approx(want)
        pos = ad.full_position_ids(inp)[:, 0]
        vid = (inp["input_ids"][0] == ad.model.config.video_token_id).nonzero().flatten()
        T = int(inp["video_grid_thw"][0, 0])
        t_ids = pos[0, vid].view(T, -1)[:, 0] - pos[0, vid[0]]
        assert t_ids.tolist() == [int(t * s * 2) for t in range(T)]
    assert frames.sampled_fps != 2.0    # the two scales really differ on this video
    with pytest.raises(ValueError, match="time_scale"):
        load_backbone("qwen2_5_vl", ck, device="cpu", dtype="float32", overrides={"time_scale": "wall"})


@pytest.mark.slow
@pytest.mark.parametrize("task", ["synth_mvbench", "synth_charades_timelens"])
def test_inspect_task_doc_is_what_a_run_feeds(task, capsys):
    """`--task T --doc 0` prints the prompt, frames and sequence length a run of that benchmark feeds the model."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from ottvid.backbones.tiny import build_tiny
    from ottvid.inspect import REPO_ROOT, benchmark_of_task, main
    from runners.lmms_models import OttvidQwen25VL

    assert main(["--backbone", "tiny_qwen2_5_vl", "--task", task, "--doc", "0", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    vtg = task.endswith("timelens")
    assert rec["mode"] == ("vtg" if vtg else "vqa") and rec["lmms_model_name"] == "qwen2_5_vl"
    assert rec["prompt_text"].endswith(f"<|vision_end|>{rec['context']}<|im_end|>\n<|im_start|>assistant\n")
    extra = benchmark_of_task(task).get("model_args") or {}
    model = OttvidQwen25VL(pretrained=str(build_tiny("qwen2_5_vl", REPO_ROOT / "cache" / "tiny" / "qwen2_5_vl")),
                           method="vanilla", device="cpu", max_new_tokens=1, **extra)
    simple_evaluate(model=model, tasks=[task], limit=1, batch_size=1,
                    task_manager=TaskManager(include_path=str(REPO_ROOT / "tasks" / "synthetic")))
    st = model.sample_stats[0]
    assert st["doc_id"] == 0 and st["prompt_text"] == rec["prompt_text"]
    assert st["frames"] == len(rec["frame_indices"]) and st["prefill_tokens"] == rec["tokens"]["llm_input"]


def test_inspect_bad_backbone_fails_clearly(capsys):
    from ottvid.inspect import main

    assert main(["--backbone", "no_such_backbone", "--video", TINY_VIDEO, "--question", "q"]) == 2
    assert "neither a checkpoint directory nor a backbone config" in capsys.readouterr().err
