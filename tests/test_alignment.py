"""Transfer measures on planted data: LogME against a direct evidence computation, the width-free
normalised Frechet distance, and Kendall's tau with its bootstrap interval."""
import numpy as np
import pytest

from covidnetx.scaling.alignment import frechet, frechet_normalised, logme


def _evidence_direct(F, y, alpha, beta):
    n, d = F.shape
    A = alpha * np.eye(d) + beta * F.T @ F
    m = beta * np.linalg.solve(A, F.T @ y)
    r = y - F @ m
    return (n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi) - beta * r @ r - alpha * m @ m
            - np.linalg.slogdet(A)[1]) / 2


@pytest.mark.parametrize("n, d", [(120, 10), (20, 40)])          # more samples than features, and fewer
def test_logme_is_the_maximised_evidence(n, d):
    """LogME's fixed point reaches the evidence maximum: the direct formula at its alpha, beta is not
    beaten on a grid around them, and the value per sample matches."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(0)
    F = rng.normal(size=(n, d))
    labels = (F[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    got = logme(F, labels, 2)
    best = []
    for c in range(2):
        y = (labels == c).astype(float)
        r = minimize(lambda p: -_evidence_direct(F, y, np.exp(p[0]), np.exp(p[1])), [0.0, 0.0], method="Nelder-Mead",
                     options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
        best.append(-r.fun / n)
    assert got == pytest.approx(np.mean(best), abs=1e-4)


def test_logme_ranks_informative_features_above_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    mix = rng.normal(size=(3, 16))
    good = np.eye(3)[y] @ mix * 2 + rng.normal(size=(300, 16))       # class means apart, plus noise
    noise = rng.normal(size=(300, 16))
    assert logme(good, y, 3) > logme(noise, y, 3) + 0.1


def test_normalised_frechet_is_width_and_scale_free():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 8)), rng.normal(0.5, 1.0, size=(200, 8))
    wide_a, wide_b = np.tile(a, 8), np.tile(b, 8)              # the same clouds in 8x the width
    assert frechet(wide_a, wide_b) == pytest.approx(8 * frechet(a, b), rel=1e-9)   # raw distance grows
    assert frechet_normalised(wide_a, wide_b) == pytest.approx(frechet_normalised(a, b), rel=1e-9)
    assert frechet_normalised(3 * a, 3 * b) == pytest.approx(frechet_normalised(a, b), rel=1e-9)
    assert frechet_normalised(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_exact_in_sample_space():
    """Alignment metric: agrees with the d x d sqrtm formula where that is well posed (more samples than
    dimensions), and stays exact, without warnings, where the covariances are singular (fewer samples than
    dimensions): shifted copies differ by |shift|^2, scaled copies by their closed form."""
    import warnings
    from scipy import linalg
    from covidnetx.scaling.alignment import frechet
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(1.0, 2.0, size=(200, 8)) @ rng.normal(size=(8, 8))
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(linalg.sqrtm(c1 @ c2).real)
    assert frechet(a, b) == pytest.approx(ref, rel=1e-9)
    assert frechet(a, b) == pytest.approx(frechet(b, a), rel=1e-12)
    x = rng.normal(size=(64, 512))                  # n < d, as in a transfer's alignment (features of 64 images)
    shift = rng.normal(size=512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frechet(x, x + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)
        trace = np.trace(np.cov(x, rowvar=False))
        assert frechet(x, 2 * x) == pytest.approx(trace + (x.mean(0) ** 2).sum(), rel=1e-9)
        assert frechet(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="equal width"):
        frechet(x, a)
