"""OTT-Vid `variant="llava"` against the official LLaVA path's outputs (tests/fixtures/ottvid/llava_*.pt,
made by tests/fixtures/ottvid/make_llava_fixtures.py from the official functions), and properties."""
import math

import pytest
import torch

from conftest import fixture_video, load_fixture, none_to_inf, synthetic_video
from ottvid import build_compressor
from ottvid.method import OTTVid
from ottvid.stages import budget, mass, spatial, transport

CASES = ["llava_a", "llava_b", "llava_c"]


def params(p: dict, **kw) -> dict:
    return dict(retention=p["retention"], gamma=p["gamma"], tau_m=none_to_inf(p["tau_m"]), tau_b=p["tau_b"],
                tau_c=none_to_inf(p["tau_c"]), sinkhorn_eps=p["eps"], sinkhorn_iters=p["iters"], **kw)


@pytest.mark.parametrize("case", CASES)
def test_llava_variant_matches_official_bitwise(case):
    fx = load_fixture("ottvid", case)
    out = build_compressor("ottvid", **params(fx["params"], variant="llava"))(fixture_video(fx["inputs"]))
    ref = fx["output"]
    assert out.count == ref["count"]
    assert torch.equal(out.positions, ref["positions"]), "positions or their order differ"
    assert out.features.dtype == ref["features"].dtype
    assert torch.equal(out.features, ref["features"]), "features differ"


def test_fixtures_cover_the_path_differences():
    """At least one case where the Qwen path lands elsewhere (count), and 14x14 grids (13-wide coordinates)."""
    counts = []
    for case in CASES:
        fx = load_fixture("ottvid", case)
        q = build_compressor("ottvid", **params(fx["params"]))(fixture_video(fx["inputs"]))
        counts.append((q.count, fx["output"]["count"]))
    assert any(a != b for a, b in counts)
    assert any(tuple(load_fixture("ottvid", c)["inputs"]["grid_hw"]) == (14, 14) for c in CASES)


@pytest.mark.parametrize("T, H, W, r", [(32, 14, 14, 0.10), (64, 13, 13, 0.10), (8, 14, 14, 0.25), (5, 13, 13, 0.15),
                                        (6, 4, 5, 0.2), (3, 14, 14, 0.5)])
def test_count_is_the_keep_target(T, H, W, r):
    """LLaVA path: K = round(N r_s), output = max(1, round(T K r / r_s)) tokens (the merge budget is spent
    whenever the caps allow, and pruning never changes the count)."""
    video = synthetic_video(T, H, W, 16, seed=T + H)
    out = build_compressor("ottvid", retention=r, variant="llava")(video)
    r_s = r ** 0.7
    K = max(1, int(round(H * W * r_s)))
    assert out.stats["K"] == K
    assert out.count == out.stats["tokens_out"] == max(1, int(round(T * K * (r / r_s))))
    assert out.stats["variant"] == "llava"


def test_paper_shape_counts():
    """The counts of the README: LLaVA-OV T=32, 14x14, r=0.10 -> 625 (Qwen path: 627)."""
    assert spatial.keep_per_frame(196, 0.1 ** 0.7, by_round=True) == 39
    assert 32 * 39 - budget.llava_total_budget(32, 39, 0.1, 0.1 ** 0.7) == 625
    assert 32 * 39 - budget.total_budget(32, 39, 196, 0.1) == 627


def test_default_variant_unchanged():
    video = synthetic_video(6, 14, 14, 24, seed=3)
    assert OTTVid.Params().variant == "qwen2_5_vl"
    a = build_compressor("ottvid", retention=0.2)(video)
    b = build_compressor("ottvid", retention=0.2, variant="qwen2_5_vl")(video)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.features, b.features)
    assert a.count == round(0.2 * 6 * 196)


def test_variant_is_checked():
    with pytest.raises(ValueError, match="variant"):
        build_compressor("ottvid", variant="llava_ov")


def test_positions_are_real_grid_slots():
    """The variant changes the cost coordinates only: reported positions stay (t, h, w) of the real grid."""
    video = synthetic_video(4, 14, 14, 16, seed=5)
    out = build_compressor("ottvid", retention=0.25, variant="llava")(video)
    p = out.positions
    assert int(p[:, 1].max()) <= 13 and int(p[:, 2].max()) <= 13
    flat = out.flat_index(video.grid_hw)
    assert torch.equal(flat, flat.sort().values), "raster order of the root slots"


def test_llava_coords_read_rows_of_13():
    sel = torch.tensor([[0, 12, 13, 195]])
    c = transport.llava_coords(sel)
    assert torch.equal(c[0, :, 0], torch.tensor([0.0, 0.0, 1.0, 15.0]) / 12)
    assert torch.equal(c[0, :, 1], torch.tensor([0.0, 12.0, 0.0, 0.0]) / 12)


def test_fill_unselected():
    s = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    sel = torch.tensor([[1, 3]])
    assert torch.equal(mass.fill_unselected(s, sel), torch.tensor([[0.3, 0.2, 0.3, 0.4]]))


def test_gamma_one_keeps_every_token_spatially():
    video = synthetic_video(8, 13, 13, 16, seed=1)
    out = build_compressor("ottvid", retention=0.25, gamma=1.0, variant="llava")(video)
    assert out.stats["K"] == 169 and out.count == round(8 * 169 * 0.25)
    assert math.isclose(out.stats["r_s"], 1.0)
