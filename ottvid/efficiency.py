"""Analytic prefill FLOPs of a Video-LLM's language model (see docs/efficiency.md).

Two conventions, both per decoder layer on a prefill of `n` tokens (text + visual):

* `"dense"` (default): what `torch.utils.flop_counter.FlopCounterMode` counts for the transformers
  forward, i.e. 2 FLOPs per multiply-accumulate of every matmul, with the real projection shapes
  (grouped-query K/V), the attention scores Q K^T and the weighted values P V over the full n x n
  square (the counter does not discount the causal mask), and the gated (SwiGLU) MLP's three matrices:

      F_layer = 2 n d (H h) + 2 * 2 n d (H_kv h) + 2 n (H h) d       # q, k, v, o projections
              + 2 * 2 n^2 (H h)                                       # Q K^T and P V
              + 2 n d m * n_mlp                                       # gate/up/down (n_mlp = 3)

  plus the LM head on the `logits_tokens` positions whose logits are computed (the adapters take
  the last position only: 2 d V). Element-wise work (norms, RoPE, softmax, SiLU, residuals) is
  O(n d) and not counted, as the FLOP counter does not count it either.

* `"aot"`: AOT (arXiv 2603.01400) Eq. 17, the FastV-style count most token-compression papers
  report: F = sum_layers (4 n d^2 + 2 n^2 d + 2 n d m) (full multi-head attention, two MLP
  matrices, one FLOP per multiply-accumulate). It reproduces AOT's 40.8 T (LLaVA-OV-7B, 32 x 196
  tokens) and 80.2 T (LLaVA-Video-7B, 64 x 169 tokens).

Values are returned in FLOPs by `prefill_flops` and TFLOPs (1e12) by `prefill_tflops`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

FORMULAS = ("dense", "aot")
# model types whose MLP is a plain up/down pair (every LLM of the paper's backbones is gated: Qwen2)
_PLAIN_MLP = {"gpt2", "gpt_neox", "opt", "phi", "bloom", "falcon", "gptj"}


@dataclass(frozen=True)
class LLMDims:
    """The dimensions of a decoder-only LLM that determine its matmul FLOPs."""

    hidden: int            # d
    layers: int            # L
    heads: int             # H
    kv_heads: int          # H_kv
    head_dim: int          # h
    intermediate: int      # m
    vocab: int             # V
    mlp_matrices: int = 3  # 3 for gated (SwiGLU) MLPs, 2 for plain up/down MLPs


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def llm_dims(config: Any) -> LLMDims:
    """`LLMDims` of a transformers config (a VLM's `text_config` is used when present) or a dict."""
    if isinstance(config, LLMDims):
        return config
    if not isinstance(config, Mapping) and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    elif _get(config, "text_config") is not None:
        config = _get(config, "text_config")
    d = int(_get(config, "hidden_size"))
    H = int(_get(config, "num_attention_heads"))
    kv = _get(config, "num_key_value_heads")
    h = _get(config, "head_dim")
    gated = _get(config, "model_type", "") not in _PLAIN_MLP
    return LLMDims(hidden=d, layers=int(_get(config, "num_hidden_layers")), heads=H,
                   kv_heads=int(kv) if kv else H, head_dim=int(h) if h else d // H,
                   intermediate=int(_get(config, "intermediate_size")), vocab=int(_get(config, "vocab_size")),
                   mlp_matrices=3 if gated else 2)


def _coefficients(dims: LLMDims, formula: str) -> tuple[float, float]:
    """(linear, quadratic) coefficients a, b with F(n) = a n + b n^2 summed over layers."""
    d, L, m = dims.hidden, dims.layers, dims.intermediate
    if formula == "dense":
        q = dims.heads * dims.head_dim
        kv = dims.kv_heads * dims.head_dim
        proj = 2 * d * q + 2 * 2 * d * kv + 2 * q * d
        mlp = 2 * d * m * dims.mlp_matrices
        return float(L * (proj + mlp)), float(L * 4 * q)
    if formula == "aot":
        return float(L * (4 * d * d + 2 * d * m)), float(L * 2 * d)
    raise ValueError(f"formula: must be one of {list(FORMULAS)}, got {formula!r}")


def prefill_flops(config: Any, seq_len: int | float, formula: str = "dense", logits_tokens: int = 1) -> float:
    """FLOPs of one prefill forward of `seq_len` tokens (text + visual) through the LLM.

    `logits_tokens`: positions the LM head is applied to (dense formula only; AOT Eq. 17 omits it).
    """
    if seq_len < 0:
        raise ValueError(f"seq_len: must be >= 0, got {seq_len}")
    dims = llm_dims(config)
    a, b = _coefficients(dims, formula)
    n = float(seq_len)
    head = 2.0 * dims.hidden * dims.vocab * logits_tokens if formula == "dense" else 0.0
    return a * n + b * n * n + head


def prefill_tflops(config: Any, seq_len: int | float, formula: str = "dense", logits_tokens: int = 1) -> float:
    """`prefill_flops` in TFLOPs (1e12 FLOPs)."""
    return prefill_flops(config, seq_len, formula, logits_tokens) / 1e12


def tokens_for_tflops(config: Any, tflops: float, formula: str = "dense", logits_tokens: int = 1) -> float:
    """The sequence length n whose prefill costs `tflops` (the positive root of a n + b n^2 = F)."""
    dims = llm_dims(config)
    a, b = _coefficients(dims, formula)
    head = 2.0 * dims.hidden * dims.vocab * logits_tokens if formula == "dense" else 0.0
    f = tflops * 1e12 - head
    return (-a + math.sqrt(a * a + 4 * b * f)) / (2 * b)


# Published 7B LLM dimensions (Qwen2.5-VL-7B-Instruct text model; Qwen2-7B in LLaVA-OV/Video-7B).
QWEN2_5_VL_7B = LLMDims(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, intermediate=18944,
                        vocab=152064)
QWEN2_7B = LLMDims(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, intermediate=18944, vocab=152064)


__all__ = ["FORMULAS", "LLMDims", "QWEN2_5_VL_7B", "QWEN2_7B", "llm_dims", "prefill_flops", "prefill_tflops",
           "tokens_for_tflops"]
