"""runners/visualize.py: masks from positions, shading, and the CLI on a tiny backbone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ottvid.contract import CompressedTokens
from runners import visualize as V

VIDEO = "tests/data/moving_square.mp4"


def test_retained_mask_marks_anchor_slots():
    pos = torch.tensor([[0, 0, 1], [1, 2, 0], [1, 2, 0], [2, 1, 1]])      # a slot can repeat (merged anchor)
    out = CompressedTokens(features=torch.zeros(4, 3), positions=pos)
    m = V.retained_mask(out, 3, (3, 2))
    assert m.shape == (3, 3, 2) and m.sum() == 3
    assert m[0, 0, 1] and m[1, 2, 0] and m[2, 1, 1]


def test_shade_dims_dropped_cells():
    frame = np.full((6, 4, 3), 200, np.uint8)
    keep = np.array([[True, False], [False, True], [False, False]])         # 3 x 2 grid -> 2 x 2 px cells
    img = V.shade(frame, keep, dim=0.25, grid=False)
    assert (img[0:2, 0:2] == 200).all() and (img[2:4, 2:4] == 200).all()
    assert (img[0:2, 2:4] == 50).all() and (img[4:6] == 50).all()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_vis")


@pytest.mark.parametrize("backbone,method,r", [("tiny_qwen2_5_vl", "ottvid", 0.1),
                                               ("tiny_llava_onevision", "fastvid", 0.25)])
def test_visualize_tiny(tiny_root, tmp_path, backbone, method, r):
    ad = V.load_adapter(backbone, method, {"retention": r}, cache_dir=str(tiny_root), device="cpu")
    png, info = V.visualize(ad, VIDEO, tmp_path / "vis.png")
    with Image.open(png) as im:
        assert im.size[0] > 300
    # every output token lights exactly its slot; positions are distinct in these methods' outputs
    assert info["kept_slots"] == info["tokens_out"] < info["tokens_in"]
    assert info["tokens_out"] == pytest.approx(r * info["tokens_in"], abs=info["grid_thw"][0] + 1)
    # the drawn mask is the compressor's output on the adapter's own encoding
    frames = ad.load(VIDEO)
    video = ad.encode(ad.build_inputs(frames, "Describe the video."), frames)
    torch.manual_seed(0)
    out = ad.compress(video)
    m = V.retained_mask(out, video.num_frames, video.grid_hw)
    assert int(m.sum()) == info["kept_slots"]


def test_cli(tiny_root, tmp_path, capsys):
    out = tmp_path / "fig.png"
    rc = V.main(["--video", VIDEO, "--backbone", "tiny_qwen2_5_vl", "--method", "ottvid", "--retention", "0.25",
                 "--set", "tau_m=inf", "--out", str(out), "--cache_dir", str(tiny_root), "--device", "cpu"])
    assert rc == 0 and out.exists()
    assert "tokens" in capsys.readouterr().out
    assert V.main(["--video", VIDEO, "--backbone", "qwen2_5_vl", "--out", str(out)]) == 2     # no checkpoint
    assert V.main(["--video", VIDEO, "--backbone", "tiny_qwen2_5_vl", "--method", "ottvid", "--set", "gamma=7",
                   "--out", str(out), "--cache_dir", str(tiny_root)]) == 2                  # bad value
