"""Binomial standard errors of evaluation fractions, against hand computations."""
import pytest

from maskclip_bench.results.significance import binomial_se, difference_se


def test_binomial_standard_error_by_hand():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)  # sqrt(0.25 / 100)
    assert binomial_se(0.1, 900) == pytest.approx(0.01)  # sqrt(0.09 / 900)
    assert binomial_se(0.0, 50) == 0.0 and binomial_se(1.0, 50) == 0.0
    assert binomial_se(1.2, 50) == 0.0 and binomial_se(-0.1, 50) == 0.0  # clipped into [0, 1]
    assert binomial_se(0.5, 0) == pytest.approx(0.5)  # n < 1 counts as one sample, never a division by zero


def test_difference_standard_error_by_hand():
    assert difference_se(0.5, 0.5, 100) == pytest.approx(0.0707107, abs=1e-7)  # sqrt(2 * 0.0025)
    # 0.1 and 0.5 on 900: sqrt(0.0001 + 0.25 / 900) = sqrt(0.000377778) = 0.0194365
    assert difference_se(0.1, 0.5, 900) == pytest.approx(0.0194365, abs=1e-7)
    assert difference_se(0.2, 0.7, 400) == difference_se(0.7, 0.2, 400)
