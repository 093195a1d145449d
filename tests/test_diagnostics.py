import numpy as np
import pytest

from lvmcore.diagnostics import active_units, gradient_statistics, kl_per_dimension
from lvmcore.experiments.snr import snr_table
from lvmcore.models import IWAE, VAE


def test_active_units_counts_dimensions_whose_mean_varies(rng):
    model = VAE(6, 3, (), dtype=np.float64)  # linear encoder: mu = x W[:, :3] + b
    W = model.encoder.params["W0"]
    W[...] = 0
    W[0, 0] = 1.0  # unit 0 follows pixel 0: variance 0.25 over balanced data
    W[1, 1] = 0.05  # unit 1 varies too little: variance 0.000625
    x = np.zeros((400, 6))
    x[::2, 0] = 1
    x[::2, 1] = 1
    count, variances = active_units(model, x)
    assert count == 1
    np.testing.assert_allclose(variances, [0.25, 0.000625, 0.0], atol=1e-12)


def test_kl_per_dimension_matches_closed_form(rng):
    model = VAE(5, 2, (4,), dtype=np.float64)
    x = (rng.random((30, 5)) < 0.5).astype(np.float64)
    mu, logvar = model.encode(x)
    want = (0.5 * (np.exp(logvar) + mu**2 - 1 - logvar)).mean(axis=0)
    np.testing.assert_allclose(kl_per_dimension(model, x, batch_size=7), want, rtol=1e-12)


def test_gradient_statistics_zero_variance_for_deterministic_part(rng):
    model = IWAE(5, 2, (4,), k=3, dtype=np.float64)
    x = (rng.random((4, 5)) < 0.5).astype(np.float64)
    st = gradient_statistics(model, x, rng, n_draws=20)
    assert st["encoder"]["snr"].shape == (
        sum(v.size for k, v in model.parameters().items() if k.startswith("encoder")),
    )
    assert st["decoder"]["mean_variance"] > 0 and np.isfinite(st["decoder"]["mean_snr"])


def test_snr_trends_of_rainforth_et_al():
    """Plain IWAE: inference-network SNR falls and generative-network SNR rises with K;
    DReG keeps the inference network's SNR far above plain IWAE's at large K."""
    from lvmcore.data import load_digits_binarized

    x = load_digits_binarized().train.astype(np.float64)
    rows = snr_table(x, ks=[1, 100], draws=60, train_steps=100)
    snr = {(r["estimator"], r["k"]): r for r in rows}
    assert snr["iwae", 100]["encoder_snr"] < 0.6 * snr["iwae", 1]["encoder_snr"]
    assert snr["iwae", 100]["decoder_snr"] > 2 * snr["iwae", 1]["decoder_snr"]
    assert snr["dreg", 100]["encoder_snr"] > 2 * snr["iwae", 100]["encoder_snr"]
    # one sample: DReG and STL coincide and the decoder gradient is shared by all three
    assert snr["dreg", 1]["encoder_snr"] == pytest.approx(snr["stl", 1]["encoder_snr"])
    assert snr["stl", 100]["decoder_snr"] == pytest.approx(snr["iwae", 100]["decoder_snr"])
