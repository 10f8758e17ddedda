"""What the LLM receives for one sample, through the adapters' own steps (what a run feeds the model).

    python -m ottvid.inspect --backbone qwen2_5_vl_7b --video v.mp4 --question "..." [--mode vqa|vtg] --json
    python -m ottvid.inspect --backbone tests/fixtures/protocol/qwen2_5_vl/processor --video v.mp4 --question Q
    python -m ottvid.inspect --backbone tiny_qwen2_5_vl --task synth_mvbench --doc 0 --method ottvid --retention 0.1

`--backbone`: a config name (`configs/backbone/<name>.yaml`: its checkpoint, or the tiny offline build
for `tiny_*`, and its frame settings) or a checkpoint directory (the family read from its config, with
the family's official protocol: VQA 32 frames; VTG 2 fps up to 768 frames, `--vtg-max-frames 32` for the
wrapper's own default). `--task T --doc ID`: the video and the context come from the lmms-eval task
(from the local dataset cache), built for the family's official lmms-eval model name
(`OFFICIAL_LMMS_MODEL`) exactly as a run builds them; the mode from the benchmark config of that task.

`--json` prints one object whose keys are those of `tests/fixtures/protocol/` (`frame_indices`,
`resized_hw`, `video_grid_thw`, `second_per_grid_ts`, `prompt_text`, `input_ids`, `position_ids`,
`rope_deltas`, `pixel_values_videos` {shape, sum, sumsq, sum_per_grid_t}, ...) plus token counts. With
`--method`, `input_ids` and `position_ids` are those of the compressed sequence (one id per kept token;
on LLaVA null where an `image_newline` embedding sits; `position_ids` (3, L) on Qwen2.5-VL, (L,) on LLaVA).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
TASKS_DIR = REPO_ROOT / "tasks"


# ---------------------------------------------------------------- backbone

def family_of_checkpoint(path: Path) -> str:
    """Adapter family of a checkpoint directory, from its config.json."""
    cfg = json.loads((path / "config.json").read_text())
    mt = cfg.get("model_type")
    if mt == "qwen2_5_vl":
        return "qwen2_5_vl"
    if mt == "llava_onevision":
        return "llava_video" if cfg.get("ottvid_llava_video") else "llava_onevision"
    raise ValueError(f"--backbone: {path} is a {mt!r} checkpoint; expected qwen2_5_vl or llava_onevision")


def resolve_backbone(spec: str) -> dict:
    """{family, pretrained, overrides, dtype, device} for a config name or a checkpoint directory."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return {"family": family_of_checkpoint(p), "pretrained": str(p), "overrides": {}, "dtype": None,
                "device": None}
    f = CONFIGS / "backbone" / f"{spec}.yaml"
    if not f.is_file():
        names = sorted(x.stem for x in (CONFIGS / "backbone").glob("*.yaml"))
        raise ValueError(f"--backbone: {spec!r} is neither a checkpoint directory nor a backbone config "
                         f"(one of {names})")
    from omegaconf import OmegaConf

    b = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
    pretrained = b.get("pretrained")
    if not pretrained:
        from .backbones.tiny import build_tiny

        pretrained = str(build_tiny(b["family"], REPO_ROOT / "cache" / "tiny" / b["family"]))
    ov = {k: b.get(k) for k in ("max_frames_num", "fps")}
    ov.update({k: v for k, v in (b.get("model_args") or {}).items()
               if k in ("max_pixels", "min_pixels", "vtg_max_frames", "time_scale", "system_prompt")})
    return {"family": b["family"], "pretrained": str(pretrained), "overrides": ov, "dtype": b.get("dtype"),
            "device": b.get("device")}


def benchmark_of_task(task: str) -> dict:
    """The benchmark config running lmms-eval task `task` ({} if none): its `model_args` (e.g. VTG fps)."""
    from omegaconf import OmegaConf

    for f in sorted((CONFIGS / "benchmark").glob("*.yaml")):
        b = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
        if b.get("task") == task:
            return b
    return {}


# ---------------------------------------------------------------- lmms-eval task

def task_request(task: str, doc_id: int, family: str) -> dict:
    """Video path, context and generation kwargs of one document, as lmms-eval builds the request.

    The task is built for the family's official lmms-eval model name (its model-specific prompts) with
    `tasks/` on the include path; the request comes from the task's own `build_all_requests`.
    """
    from lmms_eval.tasks import TaskManager, get_task_dict

    from .backbones import OFFICIAL_LMMS_MODEL
    from .backbones.common import env_flag

    bench = benchmark_of_task(task)
    if bench.get("synthetic"):
        from tasks.synthetic.generate import generate

        generate()  # idempotent
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=bool(bench.get("include_defaults", True)),
                     model_name=OFFICIAL_LMMS_MODEL[family], verbosity="WARNING")
    if task not in tm.all_tasks:
        raise ValueError(f"--task: {task!r} is not an lmms-eval task (nor one in {TASKS_DIR})")
    if tm.task_index[task]["type"] == "group":
        raise ValueError(f"--task: {task!r} is a group; pass one of its tasks (e.g. an MVBench subtask)")
    try:
        obj = get_task_dict([task], tm)[task]
    except Exception as e:
        offline = env_flag("HF_DATASETS_OFFLINE") or env_flag("HF_HUB_OFFLINE")
        raise FileNotFoundError(f"--task: could not load {task!r} ({e})"
                                + ("; its dataset must be in the local cache (offline)" if offline else "")) from e
    obj.build_all_requests(limit=doc_id + 1, rank=0, world_size=1)
    reqs = [r for r in obj.instances if r.args[3] == doc_id]
    if not reqs:
        raise ValueError(f"--doc: {task!r} has no document {doc_id}")
    context, gen_kwargs, doc_to_visual, _, _, split = reqs[0].args
    visuals = doc_to_visual(obj.dataset[split][doc_id])
    videos = [v for v in (visuals or []) if isinstance(v, str)]
    if len(videos) != 1:
        raise ValueError(f"--doc {doc_id} of {task!r}: expected exactly one video, got {visuals!r}")
    return {"video": videos[0], "context": context, "gen_kwargs": gen_kwargs, "split": split,
            "lmms_model_name": OFFICIAL_LMMS_MODEL[family], "benchmark": bench}


# ---------------------------------------------------------------- what the LLM receives

def _pixel_stats(pv: torch.Tensor, grid: torch.Tensor | None) -> dict:
    x = pv.detach().double().cpu()
    out = {"shape": list(x.shape), "dtype": str(pv.dtype), "sum": float(x.sum()), "sumsq": float((x * x).sum())}
    if grid is not None and grid.numel() == 3:
        out["sum_per_grid_t"] = x.reshape(int(grid.reshape(-1)[0]), -1).sum(1).tolist()
    return out


def _llm_input_ids(adapter, ids: torch.Tensor, extras: dict, L: int) -> list | None:
    """The token id of every position the LLM receives: the kept ids (Qwen2.5-VL), or on LLaVA the
    prompt with one video token id per kept token and null where an `image_newline` embedding sits
    (it has no id); None if that does not account for all L positions."""
    keep = extras.get("keep_index")
    if keep is not None:
        sent = ids[keep].tolist()
    elif "newline_mask" in extras:
        vid_id = adapter.model.config.video_token_id
        vid = (ids == vid_id).nonzero().flatten()
        s, e = int(vid[0]), int(vid[-1]) + 1
        sent = ids[:s].tolist() + [None if nl else vid_id for nl in extras["newline_mask"].tolist()] + ids[e:].tolist()
    else:
        sent = ids.tolist()
    return sent if len(sent) == L else None


@torch.no_grad()
def inspect_sample(adapter, video_path: str, question: str, max_new_tokens: int = 0) -> dict:
    """Run the adapter's own steps on one sample and return what its LLM receives (fixture keys)."""
    from .backbones.common import _plain

    enc = adapter.encode_sample(video_path, question)   # exactly the steps a run takes
    prep = adapter.prepare_encoded(enc)
    frames, inputs, video, out = enc.frames, enc.inputs, enc.video, prep.compressed
    ids = inputs["input_ids"][0]
    pos = prep.position_ids
    pos = pos[:, 0] if pos.dim() == 3 else pos[0]
    L = prep.inputs_embeds.shape[1]
    grid = inputs.get("video_grid_thw")
    pv = inputs.get("pixel_values_videos")
    rec: dict[str, Any] = {
        "family": adapter.family, "checkpoint": str(adapter.path), "method": adapter.method,
        "hparams": _plain(adapter.hparams),
        "mode": getattr(adapter, "mode", "vqa"),
        "video": {"path": str(video_path), "total_frames": frames.total_frames, "avg_fps": frames.native_fps},
        "decoded_frame_indices": list(frames.decoded_indices or frames.indices),
        "subsample_positions": frames.subsample_positions,
        "frame_indices": list(frames.indices),
        "resized_hw": list(frames.resized_hw) if adapter.family == "qwen2_5_vl" else (
            list(pv.shape[-2:]) if pv is not None else None),
        "video_grid_thw": grid.tolist() if grid is not None else None,
        "second_per_grid_ts": (inputs["second_per_grid_ts"].reshape(-1).tolist()
                               if inputs.get("second_per_grid_ts") is not None else None),
        "prompt_text": inputs.get("prompt"),
        "input_ids": _llm_input_ids(adapter, ids, prep.extras, L),
        "position_ids": pos.tolist(),
        "rope_deltas": int(prep.next_position) - L,
        "decode_start_position": int(prep.next_position),
        "pixel_values_videos": _pixel_stats(pv, grid) if pv is not None else None,
        "tokens": {"prompt": int(ids.numel()), "llm_input": int(L), "visual_in": int(video.num_frames * video.tokens_per_frame),
                   "visual_out": int(out.count), "visual_grid": [video.num_frames, *video.grid_hw]},
    }
    if max_new_tokens:
        gen_ids, logits, _ = adapter.generate_prepared(prep, max_new_tokens=max_new_tokens)
        rec["generation"] = {"generated_ids": gen_ids, "text": adapter.answer_text(gen_ids),
                             "first_step_logits_argmax": int(logits[0].argmax())}
    return rec


def summary(rec: dict) -> str:
    """A few readable lines of a record."""
    t = rec["tokens"]
    lines = [f"{rec['family']} ({rec['checkpoint']}), method {rec['method']} {rec['hparams'] or ''}, mode {rec['mode']}",
             f"video {rec['video']['path']}: {rec['video']['total_frames']} frames at {rec['video']['avg_fps']:g} fps",
             f"frames fed ({len(rec['frame_indices'])}): {rec['frame_indices']}",
             f"resized {rec['resized_hw']}, grid {rec['video_grid_thw']}, seconds per grid step {rec['second_per_grid_ts']}",
             f"tokens: prompt {t['prompt']}, visual {t['visual_in']} -> {t['visual_out']}, LLM input {t['llm_input']}",
             f"decoding starts at position {rec['decode_start_position']}",
             "prompt text:", rec["prompt_text"] or ""]
    if "generation" in rec:
        lines.append(f"greedy: {rec['generation']['generated_ids']} {rec['generation']['text']!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ottvid.inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True, help="config name (e.g. qwen2_5_vl_7b, tiny_qwen2_5_vl) or checkpoint dir")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="video file (with --question)")
    src.add_argument("--task", help="lmms-eval task (with --doc)")
    ap.add_argument("--question", help="the text after the video (with --video)")
    ap.add_argument("--doc", type=int, help="document id in --task")
    ap.add_argument("--mode", choices=("vqa", "vtg"), help="frame protocol (default: vqa, or the task's benchmark)")
    ap.add_argument("--vtg-max-frames", type=int, help="VTG frame cap after 2 fps sampling (official 768; wrapper default 32)")
    ap.add_argument("--max-frames", type=int, help="VQA frame count (max_frames_num)")
    ap.add_argument("--time-scale", choices=("default", "metadata"), help="Qwen2.5-VL seconds per grid step")
    ap.add_argument("--method", default="vanilla")
    ap.add_argument("--retention", type=float)
    ap.add_argument("--set", nargs="*", default=[], metavar="K=V", help="more method hyperparameters")
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--generate", type=int, default=0, metavar="N", help="also decode N greedy tokens")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    if a.video and not a.question:
        ap.error("--video needs --question")
    if a.task and a.doc is None:
        ap.error("--task needs --doc")

    try:
        rec = run(a)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rec) if a.json else summary(rec))
    return 0


def run(a: argparse.Namespace) -> dict:
    """The record for parsed command-line arguments `a`."""
    from runners.lmms_models import model_context, parse_value

    from .backbones import load_backbone

    b = resolve_backbone(a.backbone)
    ov = dict(b["overrides"])
    extra: dict[str, Any] = {}
    if a.task:
        req = task_request(a.task, a.doc, b["family"])
        video, question = req["video"], model_context(req["context"])
        ov.update({k: v for k, v in (req["benchmark"].get("model_args") or {}).items() if k in ("fps",)})
        extra = {"task": a.task, "doc_id": a.doc, "lmms_model_name": req["lmms_model_name"],
                 "gen_kwargs": req["gen_kwargs"], "context": req["context"]}
    else:
        video, question = a.video, a.question
    mode = a.mode or ("vtg" if ov.get("fps") else "vqa")
    ov["fps"] = (ov.get("fps") or 2.0) if mode == "vtg" else 0   # 0: no rate, a fixed frame count (None = unset)
    for k, v in (("vtg_max_frames", a.vtg_max_frames), ("max_frames_num", a.max_frames), ("time_scale", a.time_scale)):
        if v is not None:
            ov[k] = v
    hp = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.retention is not None:
        hp["retention"] = a.retention
    ad = load_backbone(b["family"], b["pretrained"], method=a.method, device=a.device or b["device"] or "cpu",
                       dtype=a.dtype or b["dtype"], overrides=ov, **hp)
    rec = inspect_sample(ad, video, question, max_new_tokens=a.generate)
    rec.update(extra)
    return rec


if __name__ == "__main__":
    sys.exit(main())
