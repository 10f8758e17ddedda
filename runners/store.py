"""The result store: one JSON per evaluated cell under results/runs/ (atomic writes, claims)."""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
import uuid
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


def _process_start(pid: int) -> float | None:
    """Start time of a live process (seconds since the epoch), None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, start time unknown


class Claim:
    """An exclusive claim on a cell (`<cell>.lock`) so that parallel jobs of one sweep (SLURM arrays,
    two sweeps sharing a results dir) never evaluate the same cell twice.

    The lock file appears with its content already in it (written to a private file, then
    hard-linked to the lock name, which fails if it exists: no empty-lock window, NFS-safe). It
    names its holder (host, pid, the process's start time, a random token). A claim is stale, and
    taken over, when its holder on this host is gone or its pid now belongs to another process
    (same pid, other start time), when it is older than `stale_s`, or when it is unreadable and
    older than `grace_s` (a crash mid-write by an older version). Take-over renames the stale file
    away first, so two claimants cannot both take it; release removes only our own lock."""

    def __init__(self, path: Path, stale_s: float = 48 * 3600, grace_s: float = 60.0):
        self.lock = path.with_suffix(".lock")
        self.stale_s = stale_s
        self.grace_s = grace_s
        self.held = False
        self.token = None

    def _info(self) -> tuple[dict | None, float | None]:
        """(lock content or None if unreadable, lock mtime or None if there is no lock)."""
        try:
            mtime = self.lock.stat().st_mtime
        except FileNotFoundError:
            return None, None
        info = read(self.lock)
        return (info if isinstance(info, dict) else None), mtime

    def _stale(self, info: dict | None, mtime: float) -> bool:
        if info is None:
            return time.time() - mtime > self.grace_s
        if time.time() - float(info.get("time", 0)) > self.stale_s:
            return True
        if info.get("host") == socket.gethostname():
            try:
                pid = int(info.get("pid", -1))
            except (TypeError, ValueError):
                return True
            start = _process_start(pid) if pid > 0 else None
            if start is None:
                return True  # holder is gone
            want = info.get("start")
            return start >= 0 and want is not None and abs(start - float(want)) > 1.0  # pid reused
        return False

    def _create(self) -> bool:
        self.token = uuid.uuid4().hex
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
              "start": _process_start(os.getpid()), "token": self.token}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.lock.name}.", suffix=".new", dir=self.lock.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.lock)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def _break(self, info: dict | None) -> None:
        """Move a stale lock out of the way, unless it changed since we judged it stale."""
        aside = self.lock.with_name(f".{self.lock.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.lock, aside)
        except FileNotFoundError:
            return
        now_info = read(aside)
        same = (now_info or {}).get("token") == (info or {}).get("token")
        if not same:  # someone claimed it in between: put their lock back
            try:
                os.link(aside, self.lock)
            except FileExistsError:
                pass
        os.remove(aside)

    def acquire(self) -> bool:
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return True
            info, mtime = self._info()
            if mtime is None:
                continue  # released in between: try again
            if not self._stale(info, mtime):
                return False
            self._break(info)
        return False

    def release(self) -> None:
        if self.held:
            info, _ = self._info()
            if info is not None and info.get("token") == self.token:
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
