"""Sample-major evaluation: the cells of a sweep that see the same visual input share its decode and
vision pass.

Cells are grouped by what determines the visual input (`group_key`: backbone checkpoint and its
protocol, benchmark, frames, seed, limit). A group loads its checkpoint once. lmms-eval still builds
each cell's requests and scores them with the task's own code, exactly as on the per-cell path; the
model it drives is a `CellView`. The first time any cell asks for a sample, `SharedEncoding` decodes
the video and runs the vision tower once (`Adapter.encode_sample`), then every pending cell of the
group compresses, splices and generates from that encoding (`Adapter.prepare_encoded`, `finish`) and
its answer is appended to the cell's `SampleLog`; the group's other cells only read their answers.
An interrupted group restarts at the first unfinished (cell, sample) pair.

Per-sample stats say what was shared: `shared_stages` lists the stages measured once for all cells
(`vision_ms` and the decode), and `peak_mem_gb` is the group's peak since the sample's vision pass.
"""
from __future__ import annotations

import hashlib
import json
import sys
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from .cell import Cell
from .lmms_models import FAILED_RESPONSE, failure_record, split_model_args
from .samples import SampleLog, sample_key

SHARED_STAGES = ["decode", "vision"]


def group_key(cell: Cell) -> str:
    """Hash of everything that determines a cell's visual input: its identity minus the compression
    setting (method and hyperparameters)."""
    ident = cell.identity()
    ident.pop("method")
    ident.pop("hparams")
    _, knobs = split_model_args(ident["model_args_extra"])  # method knobs set through model_args, if any
    ident["model_args_extra"] = {k: v for k, v in ident["model_args_extra"].items() if k not in knobs}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped by `group_key`, in first-seen order."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(group_key(c), []).append(c)
    return list(groups.values())


def _context_sha(sr) -> str:
    blob = json.dumps([sr.question, sr.until, sr.max_new_tokens], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SharedEncoding:
    """One group's model and its cells' sample logs; answers a (cell, request) pair, encoding each sample once."""

    def __init__(self, lm, cells: list[Cell], runs_dir, rank: int = 0, progress: bool = True):
        self.lm = lm
        self.cells = list(cells)       # the cells still being evaluated
        self.size = len(self.cells)     # the group's cells
        self.key = group_key(self.cells[0])
        self.logs = {c.key: SampleLog(c, runs_dir, rank) for c in self.cells}
        self.counts = {"samples": 0}
        self.base_counts = dict(lm.adapter.counts)  # the adapter's own decode / vision counters at the start
        self.bar = None
        if progress and rank == 0:
            from tqdm import tqdm

            self.bar = tqdm(desc=f"group {self.key} samples", unit="sample",
                            file=sys.stdout, leave=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def retire(self, cell: Cell, finished: bool) -> None:
        """A cell whose evaluation ended: no later sample is computed for it. `finished` (its JSON holds
        every sample): this rank's log of it goes; otherwise the log stays for the rerun."""
        self.cells = [c for c in self.cells if c.key != cell.key]
        log = self.logs.pop(cell.key)
        if finished:
            log.discard()

    def answer(self, cell: Cell, req: Instance) -> dict:
        """The cell's record for this request: {"text", "stats"} or {"failure"}; computed for every cell
        of the group still missing it, from one decode and one vision pass."""
        _, _, _, doc_id, task, _ = req.args
        key = sample_key(task, doc_id)
        log = self.logs[cell.key]
        try:
            sr = self.lm.sample_request(req)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the task util failed on this doc
            return {"failure": failure_record(doc_id, task, None, e)}
        sha = _context_sha(sr)
        rec = log.get(key)
        if rec is None or rec.get("context_sha") != sha:
            self._compute(key, sr, sha)
            rec = log.get(key)
        return rec

    def _compute(self, key: str, sr, sha: str) -> None:
        import torch

        from ottvid.backbones.common import Timer

        need = [c for c in self.cells if (self.logs[c.key].get(key) or {}).get("context_sha") != sha]
        adapter = self.lm.adapter
        if self.lm.warmup:  # un-timed passes before the first timed sample (CUDA start-up), as the plugin does
            try:
                for _ in range(self.lm.warmup):
                    adapter.generate(sr.video, sr.question, max_new_tokens=1)
            except (Exception, SystemExit):  # noqa: BLE001 - the sample itself reports its failure below
                pass
            self.lm.warmup = 0
            self.base_counts = dict(adapter.counts)
        dev = adapter.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        timer = Timer(dev)
        try:
            enc = adapter.encode_sample(sr.video, sr.question, timer)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - every cell records this sample as failed
            fail = failure_record(sr.doc_id, sr.task, sr, e)
            for c in need:
                self.logs[c.key].append(key, {"failure": fail, "context_sha": sha})
            self._tick()
            return
        for c in need:
            method, hparams = split_model_args(c.model_args("-"))
            self.lm.configure(method, **hparams)
            torch.manual_seed(self.lm.seed)  # the per-cell path seeds here too (nothing before draws)
            t = Timer(dev)
            t.ms.update(decode=timer.ms["decode"], vision=timer.ms["vision"])
            try:
                prep = adapter.prepare_encoded(enc, t)
                text, stats = adapter.finish(prep, t, sr.max_new_tokens, sr.until)
            except (Exception, SystemExit) as e:  # noqa: BLE001 - this cell's sample failed, the others go on
                self.logs[c.key].append(key, {"failure": failure_record(sr.doc_id, sr.task, sr, e),
                                              "context_sha": sha})
                continue
            stats.pop("generated_ids", None)
            stats["shared_stages"] = SHARED_STAGES
            self.logs[c.key].append(key, {"text": text, "stats": {"doc_id": sr.doc_id, "task": sr.task, **stats},
                                          "context_sha": sha})
        self._tick()

    def _tick(self) -> None:
        self.counts["samples"] += 1
        if self.bar is not None:
            self.bar.update(1)


class CellView(lmms):
    """The model lmms-eval drives for one cell of a group: its answers come from the group's shared
    encoding, its per-sample stats and failures are collected as the plugin's are."""

    is_simple = True

    def __init__(self, shared: SharedEncoding, cell: Cell):
        super().__init__()
        self.shared, self.cell = shared, cell
        self.sample_stats: list[dict] = []
        self.sample_failures: list[dict] = []
        self._rank, self._world_size = shared.lm.rank, shared.lm.world_size

    @property
    def device(self):
        return self.shared.lm.adapter.device

    @property
    def tokenizer(self):
        return self.shared.lm.tokenizer

    def clean(self) -> None:  # the group's model stays resident
        pass

    def sharing(self) -> dict:
        """What this cell's JSON says about its group's sharing (this rank's counts so far): samples
        encoded, and the decodes / vision passes the adapter really ran (its own counters)."""
        s = self.shared
        ran = {k: s.lm.adapter.counts[k] - s.base_counts[k] for k in s.base_counts}
        return {"group": s.key, "cells": s.size, "samples_encoded": s.counts["samples"],
                "decodes": ran["decode"], "vision_passes": ran["vision"]}

    def loglikelihood(self, requests):
        raise NotImplementedError("ottvid models answer generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("ottvid models answer single-round generate_until tasks only")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from .lmms_prompts import official_request

        lm = self.shared.lm
        lm.task_dict = self.task_dict
        out = []
        for req in requests:
            req.arguments = official_request(req.args, self.task_dict, lm.prompt_model, lm._prompt_views)
            rec = self.shared.answer(self.cell, req)
            if "failure" in rec:
                self.sample_failures.append(dict(rec["failure"]))
                out.append(FAILED_RESPONSE)
                continue
            self.sample_stats.append(dict(rec["stats"]))
            out.append(rec["text"])
        return out


