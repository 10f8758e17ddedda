"""lmms-eval end to end on CPU: our models through lmms-eval's registry on a synthetic task."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ottvid
from runners.lmms_models import parse_value

REPO = Path(__file__).resolve().parents[1]


def test_parse_value():
    assert parse_value("inf") == math.inf and parse_value("None") is None
    assert parse_value("0.1") == 0.1 and parse_value("200") == 200 and parse_value("loo") == "loo"
    assert parse_value(3) == 3 and parse_value("true") is True


@pytest.fixture(scope="module")
def mvbench_shard():
    from tasks.synthetic.generate import generate_benchmark
    from tasks.synthetic.paths import DATA_ROOT

    return generate_benchmark("mvbench", DATA_ROOT)   # writes DATA_ROOT/mvbench


@pytest.mark.slow
@pytest.mark.parametrize("method", ottvid.list_methods())
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision", "llava_video"])
def test_lmms_eval_python_api(family, method, mvbench_shard, tmp_path):
    """The runner's path for every registered method on every tiny backbone:
    registry -> instance -> simple_evaluate -> sample_stats."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model

    from ottvid.backbones.tiny import build_tiny

    _ensure_registered()
    cls = get_model(f"ottvid_{family}")
    args = "" if method == "vanilla" else ",retention=0.25"
    model = cls.create_from_arg_string(f"pretrained={build_tiny(family, REPO / 'cache')},method={method}{args},device=cpu")
    res = simple_evaluate(model=model, tasks=["synth_mvbench"], limit=2,
                          task_manager=_task_manager(), batch_size=1)
    assert "mvbench_accuracy,none" in res["results"]["synth_mvbench"]
    assert len(model.sample_stats) == 2
    st = model.sample_stats[0]
    for k in ("doc_id", "task", "tokens_in", "tokens_out", "vision_ms", "compress_ms", "prefill_ms", "ttft_ms",
              "peak_mem_gb", "method_stats"):
        assert k in st
    assert st["task"] == "synth_mvbench"
    if method == "vanilla":
        assert st["tokens_out"] == st["tokens_in"]
    else:
        assert 0 < st["tokens_out"] < st["tokens_in"]


def _ensure_registered():
    """Installed packages register through their entry points; a bare checkout (PYTHONPATH=.) has none,
    so register the same payloads the entry points name."""
    import tomllib

    from lmms_eval.models import MODEL_REGISTRY_V2

    import runners.lmms_entry as entry

    eps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    for name, target in eps.items():
        mod, fn = target.split(":")
        assert mod == "runners.lmms_entry"
        if name not in MODEL_REGISTRY_V2.list_model_names():
            MODEL_REGISTRY_V2.register_manifest(getattr(entry, fn)())


def test_entry_points_declared():
    import tomllib

    eps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    assert set(eps) == {"ottvid_qwen2_5_vl", "ottvid_llava_onevision", "ottvid_llava_video"}
    import runners.lmms_entry as entry

    for name, target in eps.items():
        m = getattr(entry, target.split(":")[1])()
        assert m.model_id == name


def _task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(REPO / "tasks" / "synthetic"))


@pytest.mark.slow
def test_lmms_eval_cli(mvbench_shard, tmp_path):
    """`python -m lmms_eval --model ottvid_qwen2_5_vl ...` with the plugin found via its entry point."""
    pytest.importorskip("importlib.metadata")
    from importlib.metadata import entry_points

    if "ottvid_qwen2_5_vl" not in {e.name for e in entry_points(group="lmms_eval.models")}:
        pytest.skip("package not installed (pip install -e .); entry points unavailable")
    from ottvid.backbones.tiny import build_tiny

    path = build_tiny("qwen2_5_vl", REPO / "cache")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "ottvid_qwen2_5_vl", "--model_args",
                        f"pretrained={path},method=ottvid,retention=0.1,device=cpu", "--tasks", "synth_mvbench",
                        "--include_path", str(REPO / "tasks" / "synthetic"), "--batch_size", "1", "--limit", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mvbench_accuracy" in r.stdout


@pytest.mark.slow
def test_context_reaches_model_unstripped(mvbench_shard):
    """The task context goes into the chat template as lmms-eval gives it (its trailing newline kept), and
    each sample's record keeps the prompt text the model received."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model

    from ottvid.backbones.tiny import build_tiny

    _ensure_registered()
    model = get_model("ottvid_qwen2_5_vl").create_from_arg_string(
        f"pretrained={build_tiny('qwen2_5_vl', REPO / 'cache')},method=vanilla,device=cpu,max_new_tokens=1")
    res = simple_evaluate(model=model, tasks=["synth_mvbench"], limit=1, task_manager=_task_manager(),
                          batch_size=1, log_samples=True)
    args = res["samples"]["synth_mvbench"][0]["arguments"]
    context = args[0] if isinstance(args[0], str) else args[0][0]
    assert context.endswith("\n") and context != context.strip()
    prompt = model.sample_stats[0]["prompt_text"]
    assert prompt.endswith(f"<|vision_end|>{context}<|im_end|>\n<|im_start|>assistant\n")


def test_cli_task_manager_gets_official_prompts(tmp_path):
    """What `python -m lmms_eval --model ottvid_llava_video` does: tasks built under the plugin's name
    (TaskManager(model_name="ottvid_llava_video")); the model gets, and lmms-eval logs, the `llava_vid`
    prompt (Video-MME: "The best answer is:")."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from ottvid.backbones.tiny import build_tiny
    from tasks.synthetic.generate import generate_benchmark
    from tasks.synthetic.paths import DATA_ROOT

    generate_benchmark("videomme", DATA_ROOT)
    _ensure_registered()
    model = get_model("ottvid_llava_video").create_from_arg_string(
        f"pretrained={build_tiny('llava_video', REPO / 'cache')},device=cpu,max_new_tokens=2")
    tm = TaskManager(include_path=str(REPO / "tasks" / "synthetic"), model_name="ottvid_llava_video")
    res = simple_evaluate(model=model, tasks=["synth_videomme"], limit=1, task_manager=tm, batch_size=1,
                          log_samples=True)
    (sample,) = res["samples"]["synth_videomme"]
    assert sample["arguments"][0].endswith("The best answer is:")
