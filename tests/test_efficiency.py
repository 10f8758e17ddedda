"""Analytic prefill FLOPs (ottvid/efficiency.py) against torch's FLOP counter and the papers' numbers."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ottvid.efficiency import (QWEN2_5_VL_7B, QWEN2_7B, LLMDims, llm_dims, prefill_flops, prefill_tflops,
                               tokens_for_tflops)

VIDEO = "tests/data/moving_square.mp4"


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory):
    from ottvid.backbones import load_backbone
    from ottvid.backbones.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny_eff")
    # eager attention: the CPU SDPA kernel is not among the ops FlopCounterMode counts
    return {f: load_backbone(f, build_tiny(f, root), method="vanilla", device="cpu", attn_implementation="eager")
            for f in ("qwen2_5_vl", "llava_onevision")}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
@pytest.mark.parametrize("method", ["vanilla", "ottvid"])
def test_matches_torch_flop_counter(tiny_adapters, family, method):
    ad = tiny_adapters[family]
    ad.set_method(method, **({"retention": 0.25} if method != "vanilla" else {}))
    prep = ad.prepare(VIDEO, "What moves in the video?")
    n = prep.inputs_embeds.shape[1]
    with FlopCounterMode(display=False) as fc:
        ad.prefill(prep)                                   # layers + LM head on the last position
    counted = fc.get_total_flops()
    assert counted > 0
    assert prefill_flops(ad.model.config, n) == pytest.approx(counted, rel=0.01)
    with FlopCounterMode(display=False) as fc:              # LLM body only
        ad.language_model()(inputs_embeds=prep.inputs_embeds, position_ids=prep.position_ids)
    assert prefill_flops(ad.model.config, n, logits_tokens=0) == pytest.approx(fc.get_total_flops(), rel=0.01)
    ad.set_method("vanilla")


def test_adapter_records_tflops(tiny_adapters):
    ad = tiny_adapters["qwen2_5_vl"]
    ad.set_method("ottvid", retention=0.25)
    _, st = ad.generate(VIDEO, "What moves?", max_new_tokens=1)
    assert st["tflops"] == pytest.approx(prefill_tflops(ad.model.config, st["prefill_tokens"]))
    ad.set_method("vanilla")
    _, st0 = ad.generate(VIDEO, "What moves?", max_new_tokens=1)
    assert st0["prefill_tokens"] - st["prefill_tokens"] == st0["tokens_out"] - st["tokens_out"]
    assert st["tflops"] < st0["tflops"]


def _qwen25vl_7b_config():
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(text_config=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                                             num_key_value_heads=4, intermediate_size=18944, vocab_size=152064))


def _llava_ov_7b_config():
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(text_config=dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28,
                                                 num_attention_heads=28, num_key_value_heads=4,
                                                 intermediate_size=18944, vocab_size=152064))


def test_real_7b_configs_parse():
    assert llm_dims(_qwen25vl_7b_config()) == QWEN2_5_VL_7B
    assert llm_dims(_llava_ov_7b_config()) == QWEN2_7B


def test_aot_eq17_reproduces_aot_tables():
    # AOT Tables 1-2 vanilla prefill: 40.8 T (LLaVA-OV-7B, 32 x 196) and 80.2 T (LLaVA-Video-7B, 64 x 169)
    assert prefill_tflops(_llava_ov_7b_config(), 32 * 196, formula="aot") == pytest.approx(40.8, rel=0.01)
    assert prefill_tflops(QWEN2_7B, 64 * 169, formula="aot") == pytest.approx(80.2, rel=0.01)
    # and their 10%-retention rows (3.4 T): 10% of the visual tokens
    assert prefill_tflops(QWEN2_7B, round(0.1 * 32 * 196), formula="aot") == pytest.approx(3.4, abs=0.05)


def test_qwen25vl_table4_vanilla_magnitude():
    # OTT-Vid Table 4: 120.25 TFLOPs for vanilla Qwen2.5-VL-7B. A 32-frame video at 476x756 px (a 480p
    # frame under the protocol's pixel bounds) is 16 temporal steps x 17 x 27 = 7344 visual tokens; with a
    # 145-token chat prompt the prefill is 7489 tokens.
    n_vis, n_text = 16 * 17 * 27, 145
    assert prefill_tflops(_qwen25vl_7b_config(), n_vis + n_text) == pytest.approx(120.25, rel=0.01)
    assert tokens_for_tflops(QWEN2_5_VL_7B, 120.25) == pytest.approx(n_vis + n_text, rel=0.005)


@pytest.mark.parametrize("r", [0.1, 0.25, 0.5])
def test_ratio_tracks_token_ratio(r):
    n_vis, n_text = 7344, 145
    n0, n1 = n_vis + n_text, round(r * n_vis) + n_text
    tok = n1 / n0
    ratio = prefill_flops(QWEN2_5_VL_7B, n1) / prefill_flops(QWEN2_5_VL_7B, n0)
    # linear terms scale exactly with the token ratio, the n^2 attention term with its square
    assert tok ** 2 < ratio < tok
    assert ratio == pytest.approx(tok, rel=0.2)
    # F(n) = a n + b n^2 exactly (second difference constant), so F is linear in tokens up to attention
    f = [prefill_flops(QWEN2_5_VL_7B, k, logits_tokens=0) for k in (0, 1, 2, 3)]
    b = (f[2] - 2 * f[1] + f[0]) / 2
    assert f[3] - 2 * f[2] + f[1] == pytest.approx(2 * b)
    a = f[1] - b
    assert prefill_flops(QWEN2_5_VL_7B, n1, logits_tokens=0) == pytest.approx(a * n1 + b * n1 ** 2)


def test_dense_formula_by_hand():
    d = LLMDims(hidden=8, layers=3, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
    n = 5
    per_layer = 2 * n * 8 * 8 + 2 * 2 * n * 8 * 4 + 2 * n * 8 * 8 + 4 * n * n * 8 + 3 * 2 * n * 8 * 16
    assert prefill_flops(d, n) == 3 * per_layer + 2 * 8 * 10
    assert prefill_flops(d, n, formula="aot") == 3 * (4 * n * 64 + 2 * n * n * 8 + 2 * n * 8 * 16)
    with pytest.raises(ValueError, match="formula"):
        prefill_flops(d, n, formula="fvcore")
    with pytest.raises(ValueError, match="seq_len"):
        prefill_flops(d, -1)


def test_flop_counter_on_a_plain_module():
    """The counter convention the dense formula follows: 2 FLOPs per multiply-accumulate."""
    lin = torch.nn.Linear(8, 4, bias=False)
    with FlopCounterMode(display=False) as fc:
        lin(torch.zeros(5, 8))
    assert fc.get_total_flops() == 2 * 5 * 8 * 4
