"""Compression memory is linear in T (issue 12): peak extra memory <= 2 x input + a constant.

Each case runs `ottvid.bench.measure_case` in a fresh interpreter: growth of the peak resident
set over the resident input, with glibc returning large freed buffers at once (see
`run_case_subprocess`). The constant covers the methods' fixed-size work buffers (blocks of at
most 2^24 elements) and interpreter noise. At this size a (T, T, D) array is 2.1 GB and FastVID's
segment pool expanded over its anchor frames is several hundred MB: the arrays quadratic in T
that UniComp and FastVID used to build fail the bound by far.
"""
import pytest

from ottvid.bench import run_case_subprocess

T, H, W, D = 512, 4, 4, 2048   # input 67 MB
SLACK = 256 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fastvid", "unicomp", "ottvid", "holitom", "flashvid", "aot"])
def test_peak_memory_is_linear_in_T(method):
    row = run_case_subprocess(method, T, H, W, D, retention=0.25, device="cpu", threads=1, timeout=600)
    assert "error" not in row, row
    extra, size = row["peak_extra_bytes"], row["input_bytes"]
    assert extra <= 2 * size + SLACK, f"{method}: peak extra memory {extra / 2**20:.0f} MB for a {size / 2**20:.0f} MB input"
