"""The result store: one JSON per evaluated cell under results/runs/ (atomic writes, claims)."""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_dir(path: str | os.PathLike) -> Path:
    """Relative paths are relative to the repository root (not to Hydra's output dir)."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        try:
            return _jsonable(x.item())
        except (TypeError, ValueError):
            pass
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=1, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(path: Path) -> bool:
    rec = read(path)
    return bool(rec) and rec.get("status") == "done"


def iter_runs(runs_dir: Path) -> Iterator[dict]:
    for p in sorted(Path(runs_dir).glob("*.json")):
        rec = read(p)
        if rec is not None and "cell" in rec:
            rec["_path"] = str(p)
            yield rec


class Claim:
    """An exclusive claim on a cell (`<cell>.lock`, created with O_EXCL) so that parallel jobs of
    one sweep (SLURM arrays, duplicate cells) never evaluate the same cell twice. A claim whose
    process is gone (same host) or that is older than `stale_s` is taken over."""

    def __init__(self, path: Path, stale_s: float = 48 * 3600):
        self.lock = path.with_suffix(".lock")
        self.stale_s = stale_s
        self.held = False

    def _stale(self) -> bool:
        info = read(self.lock) or {}
        if time.time() - float(info.get("time", 0)) > self.stale_s:
            return True
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                return False
        return False

    def acquire(self) -> bool:
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._stale():
                    try:
                        os.remove(self.lock)
                    except FileNotFoundError:
                        pass
                    continue
                return False
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.lock)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
