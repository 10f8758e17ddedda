"""The environment lock (.ci/lock.py): the check really fails on drift, and the lock honours the pins."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ci_lock", ROOT / ".ci" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def run_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "lock.py"), "check", str(path)],
                          capture_output=True, text=True)


def test_lock_pins_every_direct_choice_exactly():
    locked = lock.read_lock(ROOT / "constraints.txt")
    chosen = lock.read_lock(ROOT / ".ci" / "pins.txt")
    assert chosen, "no pins read"
    assert {n: locked.get(n) for n in chosen} == chosen
    assert len(locked) > 3 * len(chosen)  # transitive dependencies are locked too


def test_check_passes_on_the_running_environment(tmp_path):
    f = tmp_path / "lock.txt"
    f.write_text("".join(f"{n}=={v}\n" for n, v in sorted(lock.installed().items())))
    r = run_check(f)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("edit", ["wrong_version", "missing", "extra"])
def test_check_fails_when_environment_differs(tmp_path, edit):
    env = dict(sorted(lock.installed().items()))
    name = "numpy"
    if edit == "wrong_version":
        env[name] = "0.0.1"
    elif edit == "missing":
        env.pop(name)
    else:
        env["not-a-real-dist"] = "1.0"
    f = tmp_path / "lock.txt"
    f.write_text("".join(f"{n}=={v}\n" for n, v in env.items()))
    r = run_check(f)
    assert r.returncode == 1
    assert (name if edit != "extra" else "not-a-real-dist") in r.stderr


def test_lock_rejects_a_range(tmp_path):
    f = tmp_path / "lock.txt"
    f.write_text("numpy>=2\n")
    with pytest.raises(SystemExit, match="not an exact pin"):
        lock.read_lock(f)


def test_names_and_local_labels_normalised():
    assert lock.canon("Foo_Bar.baz") == "foo-bar-baz"
    assert lock.base("2.13.0+cu128") == "2.13.0"
