"""OTT-Vid against the official implementation's outputs (tests/fixtures/ottvid, see its NOTES)."""
import pytest
import torch

from conftest import fixture_video, load_fixture, none_to_inf
from ottvid import build_compressor

CASES = ["ott_a", "ott_b", "ott_e", "ott_g"]


def official_params(p: dict) -> dict:
    """Map the official run's parameters onto ours (None -> inf: uniform mass / no threshold)."""
    return dict(retention=p["retention"], gamma=p["gamma"], tau_m=none_to_inf(p["tau_m"]), tau_b=p["tau_b"],
                tau_c=none_to_inf(p["tau_c"]), sinkhorn_eps=p["eps"], sinkhorn_iters=p["iters"])


@pytest.mark.parametrize("case", CASES)
def test_matches_official(case):
    fx = load_fixture("ottvid", case)
    out = build_compressor("ottvid", **official_params(fx["params"]))(fixture_video(fx["inputs"]))
    ref = fx["output"]
    assert out.count == ref["count"]
    assert torch.equal(out.positions, ref["positions"]), "positions or their order differ"
    torch.testing.assert_close(out.features, ref["features"], atol=1e-4, rtol=0)


def test_fixture_count_is_round_rTN():
    """NOTES 1.15: on these cases the Qwen path lands exactly on round(r*T*N)."""
    for case in CASES:
        fx = load_fixture("ottvid", case)
        T, N = fx["inputs"]["features"].shape[:2]
        assert fx["output"]["count"] == round(fx["params"]["retention"] * T * N)


def test_stats_describe_the_run():
    fx = load_fixture("ottvid", "ott_a")
    out = build_compressor("ottvid", **official_params(fx["params"]))(fixture_video(fx["inputs"]))
    T = fx["inputs"]["features"].shape[0]
    s = out.stats
    assert len(s["W_t"]) == len(s["B_t"]) == len(s["alpha_t"]) == T - 1
    assert sum(s["B_t"]) == s["B_tot"] == 400  # NOTES section 4: ott_a uses B_tot = 400
    assert s["K"] == 74 and s["tokens_out"] == 784
    assert all(0.5 <= a <= 1.0 for a in s["alpha_t"])
    assert s["n_merged"] + s["n_pruned"] == s["B_tot"]
