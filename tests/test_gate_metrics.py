"""Output metrics a spec names per output: each computes its figure, passes the right way, refuses bad names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pbrforge.errors import ConfigError
from pbrforge.gate_metrics import judge, parse_gate, register_metric


def test_max_abs_is_a_share_of_the_encoded_span():
    ref = np.zeros((1, 3, 4, 4), np.float32)
    got = ref.copy()
    got[0, 0, 0, 0] = 0.0255  # one 0-255 image value off by 0.0255: 1e-4 of the span
    v = judge("max_abs:2e-4", ref, got, span=255.0)
    assert v.passed and math.isclose(v.figure, 1e-4, rel_tol=1e-4)
    assert not judge("max_abs:5e-5", ref, got, span=255.0).passed


def test_psnr_passes_above_its_limit_and_is_infinite_when_equal():
    rng = np.random.default_rng(0)
    ref = rng.random((1, 3, 8, 8))
    got = ref + 0.01  # MSE 1e-4 on a span of 1: 40 dB
    v = judge("psnr:39", ref, got, span=1.0)
    assert v.passed and math.isclose(v.figure, 40.0, abs_tol=1e-6)
    assert not judge("psnr:41", ref, got, span=1.0).passed
    assert judge("psnr", ref, ref, span=1.0).figure == math.inf


def test_exact_counts_values_that_differ_once_rounded():
    ref = np.array([1, 2, 3, 4], np.int32)
    got = np.array([1.2, 2.0, 3.6, 4.0], np.float32)  # 3.6 rounds to 4: one coder index flips
    v = judge("exact", ref, got, span=1.0)
    assert v.figure == 1 and not v.passed and "of 4 values differ" in v.detail
    assert judge("exact:1", ref, got, span=1.0).passed


def test_a_wrong_shape_or_a_nan_fails_outright():
    ref = np.zeros((2, 2), np.float32)
    assert not judge("max_abs", ref, np.zeros((2, 3), np.float32), 1.0).passed
    assert not judge("psnr:0", ref, np.full((2, 2), np.nan, np.float32), 1.0).passed


@pytest.mark.parametrize(
    ("gate", "says"),
    [
        ("ssim", "names no metric"),
        ("psnr:x", "must be a number"),
        ("psnr:-1", ">= 0"),
        ("max_abs:nan", "finite"),
    ],
)
def test_bad_gates_are_refused_in_a_sentence(gate, says):
    with pytest.raises(ConfigError, match=says):
        parse_gate(gate)


def test_a_registered_metric_is_usable_and_a_taken_name_refused():
    register_metric(
        "mean_abs_test", lambda r, g, span, lim: (float(np.abs(g - r).mean()) / span, True, ""), 0.1, "t"
    )
    assert parse_gate("mean_abs_test") == ("mean_abs_test", 0.1)
    assert judge("mean_abs_test", np.zeros(4), np.ones(4), 2.0).figure == 0.5
    with pytest.raises(ConfigError, match="taken"):
        register_metric("psnr", lambda r, g, s, lim: (0.0, True, ""), 1.0, "again")
