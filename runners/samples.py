"""Per-(cell, sample) results of a sweep in progress: one append-only JSONL file per cell.

A line is written (flushed and fsynced) only once a sample's answer is complete, so an interrupted
sweep resumes at the first unfinished (cell, sample) pair and keeps nothing partial: a torn last
line is ignored on reading. Under data parallelism each rank appends to its own file
(`<cell>.rank<r>.jsonl`); reading merges every rank's file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .cell import Cell
from .store import _jsonable


def samples_dir(runs_dir: Path) -> Path:
    return Path(runs_dir) / "samples"


def sample_key(task: str, doc_id: Any) -> str:
    return f"{task}/{doc_id}"


class SampleLog:
    """Finished samples of one cell: {sample key: {"text": ..., "stats": {...}, "context": ...}}."""

    def __init__(self, cell: Cell, runs_dir: Path, rank: int = 0):
        stem = cell.filename()[: -len(".json")]
        self.dir = samples_dir(runs_dir)
        self.stem = stem
        self.path = self.dir / (f"{stem}.jsonl" if rank == 0 else f"{stem}.rank{rank}.jsonl")
        self.done: dict[str, dict] = {}
        self.reload()

    def files(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.stem}.jsonl")) + sorted(self.dir.glob(f"{self.stem}.rank*.jsonl"))

    def reload(self) -> None:
        self.done = {}
        for f in self.files():
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line torn by a kill: that sample reruns
                        continue
                    # a failed sample is retried by a new run (its video may be back); within a run it stays failed
                    if isinstance(rec, dict) and "key" in rec and "failure" not in rec:
                        self.done[rec["key"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def get(self, key: str) -> dict | None:
        return self.done.get(key)

    def append(self, key: str, rec: dict) -> None:
        rec = {"key": key, **rec}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_jsonable(rec), sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.done[key] = rec

    def discard(self) -> None:
        """Remove this cell's sample files (after its cell JSON is written, or on `force`); a rank other
        than 0 removes only its own."""
        for f in (self.files() if self.path.name == f"{self.stem}.jsonl" else [self.path]):
            f.unlink(missing_ok=True)
        self.done = {}
