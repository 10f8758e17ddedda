"""A benchmark whose dataset is not cached fails fast, before any model loads, with how to get it."""
import pytest

from runners import lmms_glue


@pytest.fixture(scope="module")
def tm():
    return lmms_glue.task_manager(include_defaults=True)


def test_group_tasks_list_their_subtasks_datasets(tm):
    assert lmms_glue.dataset_repos("mvbench", tm) == ["OpenGVLab/MVBench"]
    assert lmms_glue.dataset_repos("timelens_charades", tm) == ["kcz358/timelens"]
    assert lmms_glue.dataset_repos("synth_mvbench", tm) == []  # local json shard


def test_uncached_dataset_offline_names_the_dataset_and_the_fix(tm, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(FileNotFoundError, match=r"'videomme'.*lmms-eval/Video-MME.*HF_HUB_OFFLINE=0"):
        lmms_glue.check_dataset("videomme", tm)
    lmms_glue.check_dataset("synth_videomme", tm)  # local shards need no hub
