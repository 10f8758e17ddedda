"""Write the synthetic benchmark shards: small real mp4 videos + annotations in each schema.

    python -m tasks.synthetic.generate [--out cache/synthetic] [--force]

Every video is a sequence of shots (a static shot, a shape moving across a plain
background, a scene cut to another background). Questions are answerable from the
pixels: the colour or direction of the moving shape, the number of scene cuts, the
shape that appears; the VTG queries ask when a shape is on screen. The output is
deterministic (fixed seeds, our own RGB->YUV, single-threaded OpenH264) and idempotent: a manifest with the
generator version and file hashes makes a rerun a no-op.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from .paths import BENCHMARKS, DATA_ROOT

VERSION = 3
SIZE = 64          # frame height and width (pixels)
FPS = 8            # frames per second of every synthetic video

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 210, 40)}
BACKGROUNDS = [(20, 20, 20), (235, 235, 235), (90, 60, 120), (40, 110, 120), (130, 90, 40)]
SHAPES = ("square", "circle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class Shot:
    """`frames` frames on a plain background; optionally one shape moving at `velocity` px/frame."""

    frames: int
    background: tuple
    shape: str | None = None
    color: str | None = None
    start: tuple = (32.0, 32.0)
    velocity: tuple = (0.0, 0.0)


@dataclass
class Clip:
    shots: list[Shot] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.shots)

    @property
    def duration(self) -> float:
        return self.frames / FPS

    @property
    def cuts(self) -> int:
        return len(self.shots) - 1

    def shape_span(self) -> tuple[float, float]:
        """[start, end) seconds of the first shot that shows a shape."""
        t = 0
        for s in self.shots:
            if s.shape is not None:
                return t / FPS, (t + s.frames) / FPS
            t += s.frames
        raise ValueError("clip has no shape")


def render(clip: Clip) -> np.ndarray:
    """(F, SIZE, SIZE, 3) uint8 frames of a clip."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = []
    for s in clip.shots:
        for i in range(s.frames):
            img = np.empty((SIZE, SIZE, 3), np.uint8)
            img[:] = s.background
            if s.shape is not None:
                cx = s.start[0] + s.velocity[0] * i
                cy = s.start[1] + s.velocity[1] * i
                r = 7
                if s.shape == "square":
                    mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
                else:
                    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                img[mask] = COLORS[s.color]
            out.append(img)
    return np.stack(out)


def _pick_codec() -> str:
    """H.264 through OpenH264 (bit-identical reruns; libx264 here is not), else MPEG-4 part 2."""
    for name in ("libopenh264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec missing from this PyAV build
            continue
    raise RuntimeError("PyAV has neither libopenh264 nor mpeg4 encoders")


CODEC = _pick_codec()


def rgb_to_yuv420p(img: np.ndarray) -> np.ndarray:
    """BT.601 limited-range RGB -> planar I420 (H*3/2, W) uint8, computed here rather than by
    swscale so that the encoder input, and hence the file, is bit-identical across runs."""
    x = img.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
    planes = [y.reshape(-1), sub(u).reshape(-1), sub(v).reshape(-1)]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_mp4(frames: np.ndarray, path: Path) -> None:
    """Encode frames as an mp4 (single-threaded encoder, fixed options: byte-identical reruns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(CODEC, rate=FPS)
            stream.width, stream.height = SIZE, SIZE
            stream.pix_fmt = "yuv420p"
            stream.thread_count = 1
            stream.thread_type = "NONE"
            stream.bit_rate = 400_000
            for img in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(img), format="yuv420p")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- clip builders ---------------------------------------------------------------------

def moving_clip(rng: np.random.Generator, seconds: float, color: str, direction: str, shape: str) -> Clip:
    """One shot: a shape crossing a plain background in `direction`."""
    n = int(round(seconds * FPS))
    dx, dy = DIRECTIONS[direction]
    speed = 36.0 / n
    start = (32.0 - dx * 18.0, 32.0 - dy * 18.0)
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Clip([Shot(n, bg, shape, color, start, (dx * speed, dy * speed))])


def cut_clip(rng: np.random.Generator, seconds: float, n_shots: int, shape_shot: int | None = None,
             color: str = "red", shape: str = "circle") -> Clip:
    """`n_shots` shots on distinct backgrounds (n_shots - 1 scene cuts); one may show a moving shape."""
    n = int(round(seconds * FPS))
    bounds = np.linspace(0, n, n_shots + 1).round().astype(int)
    bgs = rng.permutation(len(BACKGROUNDS))[:n_shots]
    shots = []
    for k in range(n_shots):
        frames = int(bounds[k + 1] - bounds[k])
        if k == shape_shot:
            d = list(DIRECTIONS)[int(rng.integers(4))]
            dx, dy = DIRECTIONS[d]
            shots.append(Shot(frames, BACKGROUNDS[bgs[k]], shape, color,
                              (32.0 - dx * 12.0, 32.0 - dy * 12.0), (dx * 24.0 / frames, dy * 24.0 / frames)))
        else:
            shots.append(Shot(frames, BACKGROUNDS[bgs[k]]))
    return Clip(shots)


def _options(rng: np.random.Generator, answer: str, pool: list[str], k: int, slot: int) -> list[str]:
    """k options with the answer at position `slot % k` and shuffled distractors. Callers cycle the
    slot over a shard's samples, so every option letter is correct equally often (no letter bias)."""
    others = [p for p in pool if p != answer]
    opts = [others[i] for i in rng.permutation(len(others))[: k - 1]]
    opts.insert(slot % k, answer)
    return opts


LETTERS = "ABCDE"


# ---- one builder per benchmark schema --------------------------------------------------

def build_mvbench(rng):
    """MVBench schema: video, question, candidates (texts), answer (the correct candidate's text)."""
    docs = []
    for i in range(5):
        if i % 2 == 0:
            d = list(DIRECTIONS)[i % 4]
            clip = moving_clip(rng, 2.0, list(COLORS)[i % 4], d, SHAPES[i % 2])
            q, ans, pool = "Which direction is the object moving?", d, list(DIRECTIONS)
            sub = "moving_direction"
        else:
            cuts = 1 + i % 3
            clip = cut_clip(rng, 2.0, cuts + 1)
            q, ans, pool = "How many times does the scene change?", str(cuts), ["0", "1", "2", "3"]
            sub = "scene_transition"
        docs.append((clip, {"video": f"mvb_{i}.mp4", "question": q, "candidates": _options(rng, ans, pool, 4, i),
                            "answer": ans, "sub_task": sub}))
    return docs


def build_videomme(rng):
    """Video-MME schema: videoID, question_id, duration, domain, sub_category, task_type,
    question, options ("A. ..."), answer (letter)."""
    docs = []
    for i in range(5):
        color = list(COLORS)[i % 4]
        clip = moving_clip(rng, 3.0, color, list(DIRECTIONS)[(i + 1) % 4], SHAPES[i % 2])
        opts = _options(rng, color, list(COLORS), 4, i)
        docs.append((clip, {
            "video_id": f"{i:03d}", "videoID": f"vmme_{i}", "question_id": f"vmme_{i}-1", "duration": "short",
            "domain": "Life Record", "sub_category": "Daily Life", "task_type": "Attribute Perception",
            "question": "What color is the moving object?",
            "options": [f"{LETTERS[k]}. {o}" for k, o in enumerate(opts)], "answer": LETTERS[opts.index(color)],
        }))
    return docs


def build_longvideobench(rng):
    """LongVideoBench schema: id, video_path, question, option0..option4 ("N/A" if unused),
    correct_choice (index), duration_group, question_category, duration."""
    docs = []
    for i in range(5):
        shape = SHAPES[i % 2]
        clip = cut_clip(rng, 4.0, 3, shape_shot=i % 3, color=list(COLORS)[i % 4], shape=shape)
        pool = ["square", "circle", "triangle", "star"]
        opts = _options(rng, shape, pool, 4, i)
        doc = {"id": f"lvb_{i}", "video_path": f"lvb_{i}.mp4", "question": "Which shape appears in the video?",
               "correct_choice": opts.index(shape), "duration_group": 15, "question_category": "S2E",
               "duration": clip.duration, "subtitle_path": "", "starting_timestamp_for_subtitles": 0.0}
        for k in range(5):
            doc[f"option{k}"] = opts[k] if k < len(opts) else "N/A"
        docs.append((clip, doc))
    return docs


MLVU_TYPES = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")


def build_mlvu(rng):
    """MLVU-dev schema: video_name, question (options embedded "(A) ..."), candidates, answer (letter),
    task_type, duration. One sample per task type: upstream averages over all seven types."""
    docs = []
    for i, tt in enumerate(MLVU_TYPES):
        cuts = i % 3
        clip = cut_clip(rng, 3.0, cuts + 1, shape_shot=0, color=list(COLORS)[i % 4], shape=SHAPES[i % 2])
        if tt == "count":
            q, ans, pool = "How many scene changes are there?", str(cuts), ["0", "1", "2", "3"]
        else:
            q, ans, pool = "What color is the shape at the start?", list(COLORS)[i % 4], list(COLORS)
        opts = _options(rng, ans, pool, 4, i)
        text = q + "\n" + "\n".join(f"({LETTERS[k]}) {o}" for k, o in enumerate(opts))
        docs.append((clip, {"video_name": f"mlvu_{i}.mp4", "question": text, "candidates": opts,
                            "answer": LETTERS[opts.index(ans)], "task_type": tt, "duration": clip.duration}))
    return docs


def _build_timelens(rng, prefix: str, seconds: float, n_shots: int):
    """TimeLens schema: video_path, query, span [[start, end]] seconds, duration."""
    docs = []
    for i in range(5):
        k = i % n_shots
        color, shape = list(COLORS)[i % 4], SHAPES[(i + 1) % 2]
        clip = cut_clip(rng, seconds, n_shots, shape_shot=k, color=color, shape=shape)
        s, e = clip.shape_span()
        docs.append((clip, {"video_path": f"{prefix}_{i}.mp4", "query": f"a {color} {shape} moves across the screen",
                            "span": [[round(s, 3), round(e, 3)]], "duration": clip.duration}))
    return docs


def build_charades_timelens(rng):
    return _build_timelens(rng, "cha", 3.0, 3)


def build_activitynet_timelens(rng):
    return _build_timelens(rng, "anet", 4.0, 4)


BUILDERS = {
    "mvbench": (build_mvbench, "video"),
    "videomme": (build_videomme, None),
    "longvideobench": (build_longvideobench, "video_path"),
    "mlvu": (build_mlvu, "video_name"),
    "charades_timelens": (build_charades_timelens, "video_path"),
    "activitynet_timelens": (build_activitynet_timelens, "video_path"),
}
assert tuple(BUILDERS) == BENCHMARKS


def _video_name(doc: dict, key: str | None) -> str:
    return doc[key] if key else doc["videoID"] + ".mp4"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _up_to_date(bench_dir: Path) -> bool:
    man = bench_dir / "manifest.json"
    if not man.is_file():
        return False
    try:
        m = json.loads(man.read_text())
    except json.JSONDecodeError:
        return False
    if m.get("version") != VERSION:
        return False
    return all((bench_dir / rel).is_file() and _sha(bench_dir / rel) == h for rel, h in m["files"].items())


def generate_benchmark(benchmark: str, out: Path, force: bool = False) -> Path:
    """Write `<out>/<benchmark>/{videos/*.mp4, test.jsonl, manifest.json}`; no-op when up to date."""
    bench_dir = out / benchmark
    if not force and _up_to_date(bench_dir):
        return bench_dir
    build, key = BUILDERS[benchmark]
    seed = int.from_bytes(hashlib.sha256(benchmark.encode()).digest()[:4], "little")
    docs = build(np.random.default_rng(seed))
    files = {}
    for clip, doc in docs:
        rel = f"videos/{_video_name(doc, key)}"
        write_mp4(render(clip), bench_dir / rel)
        files[rel] = _sha(bench_dir / rel)
    ann = bench_dir / "test.jsonl"
    tmp = ann.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(doc, sort_keys=True) + "\n" for _, doc in docs))
    os.replace(tmp, ann)
    files["test.jsonl"] = _sha(ann)
    man = bench_dir / "manifest.json"
    man.with_suffix(".tmp").write_text(json.dumps({"version": VERSION, "files": files}, indent=1, sort_keys=True))
    os.replace(man.with_suffix(".tmp"), man)
    return bench_dir


def generate(out: Path = DATA_ROOT, benchmarks=BENCHMARKS, force: bool = False) -> list[Path]:
    return [generate_benchmark(b, Path(out), force) for b in benchmarks]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DATA_ROOT,
                   help=f"output folder (default {DATA_ROOT}; the synth_* tasks read this one)")
    p.add_argument("--benchmark", action="append", choices=BENCHMARKS, help="only these (repeatable)")
    p.add_argument("--force", action="store_true", help="rewrite even if up to date")
    a = p.parse_args(argv)
    for d in generate(a.out, tuple(a.benchmark or BENCHMARKS), a.force):
        n = sum(1 for _ in open(d / "test.jsonl"))
        print(f"{d}: {n} samples")


if __name__ == "__main__":
    main()
