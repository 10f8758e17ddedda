"""lmms-eval prompts are model-specific: every task is built for the official run's model name.

lmms-eval 0.7.3 picks a task's `lmms_eval_specific_kwargs` (pre/post prompts), its
`model_specific_target_kwargs` and `model_specific_generation_kwargs` by the model name the
`TaskManager` was created with (`ConfigurableTask._prepare_model_specific_config`): the entry
named after the model if there is one, else the `default` entry. The official OTT-Vid runs used
lmms-eval's own model names (`OFFICIAL_LMMS_MODEL`); our plugin registers as `ottvid_<family>`,
which no task names, so every task would fall back to `default` (Video-MME on LLaVA-Video would
lose its "The best answer is:").

- The runners build their `TaskManager(model_name=<official name>)`: lmms-eval resolves the prompts
  itself (`prompt_model`).
- A plain `python -m lmms_eval --model ottvid_<family>` builds the tasks under the plugin's name;
  the plugin then re-resolves each request for the official name (`official_request`), with the
  task's own resolution and `doc_to_text`, and writes the result back into the request so the
  logged samples show what the model received.
"""
from __future__ import annotations

import copy

from ottvid.backbones import OFFICIAL_LMMS_MODEL


def prompt_model(backbone: dict) -> str | None:
    """lmms-eval model name a backbone's tasks are built for: the config's `prompt_model` if set
    (`null`/`none` = lmms-eval's `default` prompts), else the family's official run's name."""
    if "prompt_model" in backbone:
        name = backbone["prompt_model"]
        return None if name in (None, "", "none", "None", "default") else str(name)
    fam = backbone.get("family")
    if fam not in OFFICIAL_LMMS_MODEL:
        raise ValueError(f"backbone family: must be one of {sorted(OFFICIAL_LMMS_MODEL)}, got {fam!r}")
    return OFFICIAL_LMMS_MODEL[fam]


def retargeted_task(task, model_name: str | None):
    """A view of an lmms-eval task whose model-specific config is resolved for `model_name`,
    by lmms-eval's own `_prepare_model_specific_config` on a copy of the task's config."""
    if getattr(task, "model_name", None) == model_name:
        return task
    if task.config.model_specific_generation_kwargs:
        raise ValueError(
            f"task {task.config.task!r} has model_specific_generation_kwargs, which lmms-eval merged into its "
            f"generation kwargs for model {task.model_name!r}; they cannot be re-resolved for {model_name!r}. "
            f"Build the task with TaskManager(model_name={model_name!r}) (the runners do).")
    target = task.config.model_specific_target_kwargs
    if isinstance(target, dict) and model_name in target:
        raise ValueError(
            f"task {task.config.task!r} has model_specific_target_kwargs for {model_name!r}, which score the "
            f"task built under {task.model_name!r}; build the task with TaskManager(model_name={model_name!r}).")
    view = copy.copy(task)
    view._config = copy.deepcopy(task._config)
    view.model_name = model_name
    view._prepare_model_specific_config()
    return view


def official_request(args: tuple, docs: dict, model_name: str | None, views: dict | None = None) -> tuple:
    """A `generate_until` request's arguments as lmms-eval builds them for `model_name`.

    `args` = (context, gen_kwargs, doc_to_visual, doc_id, task, split) as lmms-eval 0.7.3 passes
    them; `docs` = the model's `task_dict`. Unchanged when the task was built for `model_name`.
    The context keeps whatever lmms-eval put before the document's text (system instruction,
    description); only the document's text is rebuilt.
    """
    context, gen_kwargs, doc_to_visual, doc_id, task_name, split = args
    task = getattr(doc_to_visual, "__self__", None)
    if task is None or not hasattr(task, "_prepare_model_specific_config") or task.model_name == model_name:
        return args
    views = {} if views is None else views
    if task_name not in views:
        views[task_name] = retargeted_task(task, model_name)
    view = views[task_name]
    doc = docs[task_name][split][doc_id]
    old, new = task.doc_to_text(doc), view.doc_to_text(doc)
    if not (isinstance(context, str) and isinstance(old, str) and isinstance(new, str)):
        raise ValueError(f"task {task_name!r}: only text contexts can be re-resolved for model {model_name!r}")
    if not context.endswith(old):
        raise ValueError(f"task {task_name!r} doc {doc_id}: the context does not end with the document's text "
                         f"(few-shot or chat-templated contexts cannot be re-resolved for model {model_name!r}); "
                         f"build the task with TaskManager(model_name={model_name!r})")
    return (context[:len(context) - len(old)] + new, gen_kwargs, doc_to_visual, doc_id, task_name, split)
