"""The classic variance experiment: REINFORCE versus reparameterization for d/dtheta E[x^2].

Tolerances are statistical: a mean within 4.5 standard errors of the truth (closed-form
variance), a sample variance inside its chi-square acceptance interval at level 1e-6
(exact chi-square for the Gaussian reparameterization gradient, a scaled chi-square matched to
the exact fourth moment for the heavy-tailed REINFORCE one; its coverage is checked too).
"""

import numpy as np
import pytest
from numpy.polynomial import polynomial as P
from scipy import stats

from lvmcore.experiments import estimator_variance as ev


@pytest.fixture
def rng():
    return np.random.default_rng(20260303)


@pytest.mark.parametrize("theta", [0.0, 0.5, 2.0, -3.0])
def test_closed_form_variances(theta):
    # E[x^4 (x - theta)^2] - (2 theta)^2 with x = theta + eps, from normal moments
    x2eps = np.array([0.0, theta**2, 2 * theta, 1.0])  # x^2 eps
    second = ev._poly_expectation(P.polypow(x2eps, 2))
    assert second - 4 * theta**2 == pytest.approx(ev.reinforce_variance(theta), rel=1e-12)
    assert ev.reinforce_variance(2.0) == 87
    assert ev.reparam_variance(theta) == 4
    assert ev.excess_kurtosis("reparam", theta) == pytest.approx(0, abs=1e-12)


def test_moments_match_monte_carlo(rng):
    rf, rp = ev.per_sample_gradients(rng, 2.0, 2_000_000)
    assert rf.mean() == pytest.approx(4, abs=4.5 * np.sqrt(87 / rf.size))
    assert rp.mean() == pytest.approx(4, abs=4.5 * np.sqrt(4 / rp.size))
    assert stats.kurtosis(rf) == pytest.approx(ev.excess_kurtosis("reinforce", 2.0), rel=0.1)


def test_variance_table_matches_the_closed_forms():
    rows = ev.variance_table(2.0, (10, 100, 1000, 10000, 100000), seed=0)
    for r in rows:
        for name in ("reinforce", "reparam"):
            se = np.sqrt(r[f"{name}_mean_var_true"])
            assert abs(r[f"{name}_mean"] - 4) < 4.5 * se
            lo, hi = r[f"{name}_interval"]
            assert lo <= r[f"{name}_var"] <= hi
        assert r["reinforce_var_true"] == 87 and r["reparam_var_true"] == 4
    last = rows[-1]
    assert last["reinforce_var"] == pytest.approx(87, rel=0.1)
    assert last["reparam_var"] == pytest.approx(4, rel=0.03)


def test_gaussian_interval_is_the_exact_chi_square():
    lo, hi = ev.variance_interval(50, 0.0, alpha=0.01)
    assert lo == pytest.approx(stats.chi2.ppf(0.005, 49) / 49)
    assert hi == pytest.approx(stats.chi2.ppf(0.995, 49) / 49)


def test_scaled_chi_square_interval_covers_the_reinforce_sample_variance(rng):
    """Coverage of the 1 % interval for the heavy-tailed REINFORCE values at n = 1000."""
    n, reps = 1000, 2000
    lo, hi = ev.variance_interval(n, ev.excess_kurtosis("reinforce", 2.0), alpha=0.01)
    eps = rng.standard_normal((reps, n))
    x = 2.0 + eps
    s2 = (x * x * eps).var(axis=1, ddof=1) / 87
    inside = ((s2 >= lo) & (s2 <= hi)).mean()
    assert inside > 0.97


def test_toy_2d_both_converge_reparameterization_faster():
    rows = {
        r["estimator"]: r for r in ev.toy_2d_table(lr=0.01, samples=10, steps=1200, runs=50, seed=0)
    }
    for r in rows.values():
        assert r["diverged"] == 0 and r["floor"] < 0.15
        assert all(v is not None for v in r["steps_to"].values())
    assert rows["reparam"]["steps_to"][0.1] < rows["reinforce"]["steps_to"][0.1]
    assert rows["reparam"]["floor"] < rows["reinforce"]["floor"]


def test_toy_2d_rejects_unknown_estimator():
    from lvmcore.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="'estimator' parameter of toy_2d"):
        ev.toy_2d("rebar")


def test_script_prints_both_tables(capsys):
    assert ev.main(["--ns", "10,1000", "--steps", "300", "--runs", "10"]) == 0
    out = capsys.readouterr().out
    assert "| N | REINFORCE mean" in out and "| 1000 |" in out
    assert "| reparam |" in out and "| reinforce |" in out
