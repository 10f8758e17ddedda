"""lmms-eval's model-specific prompts: every (task, model) pair of the official runs reproduces the
context string, generation kwargs and resolved `lmms_eval_specific_kwargs` recorded from
lmms-eval 0.7.3 (tests/fixtures/protocol/lmms_prompts.json), through lmms-eval's real task
definitions, on the fixture's documents (no dataset is downloaded: the task's data is the one doc).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ottvid.backbones import OFFICIAL_LMMS_MODEL
from runners.lmms_prompts import official_request, prompt_model

FIX = json.loads((Path(__file__).parent / "fixtures" / "protocol" / "lmms_prompts.json").read_text())
PROMPTS = FIX["prompts"]
TASK_DIRS = ("mvbench", "videomme", "longvideobench", "mlvu", "timelens")
PAIRS = [(t, m) for t in PROMPTS for m in PROMPTS[t]]


@pytest.fixture(scope="module")
def task_configs():
    """Resolved configs of the six tasks from lmms-eval's own task folders (index of those folders only)."""
    import lmms_eval
    from lmms_eval.tasks import TaskManager

    root = Path(lmms_eval.__file__).parent / "tasks"
    tm = TaskManager(verbosity="ERROR", include_path=[str(root / d) for d in TASK_DIRS], include_defaults=False)
    return {t: tm._get_config(t) for t in PROMPTS}


def _offline_task(config: dict, model_name: str | None, split: str, doc: dict):
    """lmms-eval's ConfigurableTask on one in-memory document instead of the hub dataset."""
    import datasets
    from lmms_eval.api.task import ConfigurableTask

    class OneDocTask(ConfigurableTask):
        def download(self, dataset_kwargs=None) -> None:
            self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list([doc])})
            self.dataset_no_image = self.dataset  # what download() sets for datasets without image columns

    return OneDocTask(config=dict(config), model_name=model_name)


def _request(task):
    task.build_all_requests(limit=1, rank=0, world_size=1)
    (inst,) = task.instances
    return inst.args


def _model(m: str) -> str | None:
    return None if m == "<none>" else m


@pytest.mark.parametrize("task_name,model", PAIRS)
def test_prompt_for_official_model_name(task_configs, task_name, model):
    """The runners' path: tasks built with the official run's model name (TaskManager(model_name=...))."""
    exp = PROMPTS[task_name][model]
    task = _offline_task(task_configs[task_name], _model(model), exp["split"], exp["doc"])
    ctx, gen_kwargs, _, doc_id, _, split = _request(task)
    assert ctx == exp["context"]
    assert gen_kwargs == exp["generation_kwargs"]
    assert task.lmms_eval_specific_kwargs == exp["lmms_eval_specific_kwargs"]
    assert (doc_id, split) == (exp["doc_id"], exp["split"])


@pytest.mark.parametrize("family", sorted(OFFICIAL_LMMS_MODEL))
@pytest.mark.parametrize("task_name", sorted(PROMPTS))
def test_plugin_name_is_retargeted(task_configs, task_name, family):
    """`python -m lmms_eval --model ottvid_<family>`: lmms-eval builds the task under the plugin's name,
    the plugin's re-resolution gives exactly the official model's request."""
    official = OFFICIAL_LMMS_MODEL[family]
    exp = PROMPTS[task_name][official]
    task = _offline_task(task_configs[task_name], f"ottvid_{family}", exp["split"], exp["doc"])
    args = _request(task)
    docs = {args[4]: {exp["split"]: task.test_docs() if task.has_test_docs() else task.validation_docs()}}
    ctx, gen_kwargs, *_ = official_request(args, docs, official)
    assert ctx == exp["context"]
    assert gen_kwargs == exp["generation_kwargs"]
    # built for the official name already: nothing changes
    task2 = _offline_task(task_configs[task_name], official, exp["split"], exp["doc"])
    args2 = _request(task2)
    assert official_request(args2, docs, official) is args2


def test_videomme_llava_video_differs():
    """The case the mapping exists for: Video-MME on LLaVA-Video ends with "The best answer is:"."""
    assert PROMPTS["videomme"]["llava_vid"]["context"].endswith("The best answer is:")
    assert not PROMPTS["videomme"]["<none>"]["context"].endswith("The best answer is:")


def test_prompt_model_of_backbones():
    assert OFFICIAL_LMMS_MODEL == {"qwen2_5_vl": "qwen2_5_vl", "llava_onevision": "llava_onevision",
                                   "llava_video": "llava_vid"}
    assert prompt_model({"family": "llava_video"}) == "llava_vid"
    assert prompt_model({"family": "qwen2_5_vl", "prompt_model": None}) is None
    assert prompt_model({"family": "qwen2_5_vl", "prompt_model": "llava_vid"}) == "llava_vid"
    with pytest.raises(ValueError, match="family"):
        prompt_model({"family": "llama"})


def test_backbone_configs_name_their_prompt_model():
    import yaml

    for f in sorted((Path(__file__).parents[1] / "configs" / "backbone").glob("*.yaml")):
        cfg = yaml.safe_load(f.read_text())
        assert cfg["prompt_model"] == OFFICIAL_LMMS_MODEL[cfg["family"]], f.name


@pytest.mark.parametrize("backbone,ending", [("tiny_llava_video", "The best answer is:"),
                                             ("tiny_llava_onevision", "given choices directly.")])
def test_runner_builds_tasks_for_the_official_name(backbone, ending):
    """The runners' TaskManager builds each task for the backbone's official lmms-eval model name."""
    import yaml
    from lmms_eval.tasks import get_task_dict

    from runners import lmms_glue
    from tasks.synthetic.generate import generate_benchmark
    from tasks.synthetic.paths import DATA_ROOT

    generate_benchmark("videomme", DATA_ROOT)
    b = yaml.safe_load((Path(__file__).parents[1] / "configs" / "backbone" / f"{backbone}.yaml").read_text())
    tm = lmms_glue.task_manager(False, prompt_model(b))
    assert tm.model_name == OFFICIAL_LMMS_MODEL[b["family"]]
    task = get_task_dict(["synth_videomme"], tm)["synth_videomme"]
    ctx = _request(task)[0]
    assert ctx.endswith(ending)
    assert lmms_glue.task_manager(False, None).model_name is None  # the shared index keeps its own name


def test_retargeting_refuses_what_it_cannot_rebuild(task_configs):
    from runners.lmms_prompts import retargeted_task

    exp = PROMPTS["videomme"]["llava_vid"]
    task = _offline_task(task_configs["videomme"], "ottvid_llava_video", exp["split"], exp["doc"])
    ctx, *rest = _request(task)
    docs = {rest[3]: {exp["split"]: task.test_docs()}}
    with pytest.raises(ValueError, match="does not end with the document's text"):
        official_request((ctx + "\nextra", *rest), docs, "llava_vid")
    cfg = dict(task_configs["videomme"], model_specific_generation_kwargs={"default": {"max_new_tokens": 4}})
    with pytest.raises(ValueError, match="model_specific_generation_kwargs"):
        retargeted_task(_offline_task(cfg, "ottvid_llava_video", exp["split"], exp["doc"]), "llava_vid")
    cfg = dict(task_configs["videomme"], model_specific_target_kwargs={"llava_vid": "x", "default": "y"})
    with pytest.raises(ValueError, match="model_specific_target_kwargs"):
        retargeted_task(_offline_task(cfg, "ottvid_llava_video", exp["split"], exp["doc"]), "llava_vid")
