"""scikit-learn's estimator checks, in both data orientations, and espm's documented settings."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from espm_lite import PNMF, SNMF, ConvexNMF, SmoothNMF

# Every estimator ends its fit with the solve of the sample-side factor that
# transform uses, so fit_transform(X) and fit(X).transform(X) agree, with one
# exception: PNMF with hspy_comp=False on the checks' 30 x 3 data. There the
# fitted posterior maps have nearly proportional columns, so the spectra of a
# channel lie in a flat valley of the ELBO: the polished fit and transform
# reach the same objective (to 1e-12) at different points of the valley, and
# the check compares points. tests/test_pnmf.py checks the property on a
# phantom.
EXPECTED_FAILED = {
    "check_transformer_general": "flat valley of the spectra problem on 30x3 data, see above",
    "check_transformer_data_not_an_array": "flat valley of the spectra problem, see above",
}


# espm's settings put 5 phases on the checks' 2 columns (pixels, hspy_comp=False): each
# channel's spectra problem has 5 unknowns for 2 values, a valley of exact fits. The
# accelerated fit reaches a near-exact fit (data term 4e-8 after 200 iterations) that
# the row-by-row Newton solve of transform does not reach from its least-squares start
# (1.7e-3), so the final solve is not kept and the two differ. The plain updates
# (accelerate=False) stop short of it and pass; see the closing note of issue #11.
ESPM_DEGENERATE = {
    "check_transformer_general": "k=5 on 2 pixels: the spectra problem has a valley of exact "
    "fits that transform's row solve does not reach, see above",
    "check_transformer_data_not_an_array": "k=5 on 2 pixels, see above",
}


def _expected_failed(estimator):
    if isinstance(estimator, PNMF) and not estimator.hspy_comp:
        return EXPECTED_FAILED
    if isinstance(estimator, SmoothNMF) and estimator.n_components == 5:
        return ESPM_DEGENERATE
    return {}


#: espm's own estimator test runs check_estimator on these two settings.
ESPM_SETTINGS = dict(
    n_components=5, max_iter=200, simplex_W=False, simplex_H=True, mu=1.0, epsilon_reg=1.0
)


@parametrize_with_checks(
    [
        SmoothNMF(verbose=0),
        SmoothNMF(verbose=0, hspy_comp=True),
        SmoothNMF(verbose=0, hspy_comp=False, **ESPM_SETTINGS),
        SmoothNMF(verbose=0, hspy_comp=False, lambda_L=2, **ESPM_SETTINGS),
        PNMF(verbose=0),
        PNMF(verbose=0, hspy_comp=True),
        SNMF(verbose=0),
        SNMF(verbose=0, hspy_comp=True),
        ConvexNMF(verbose=0),
        ConvexNMF(verbose=0, hspy_comp=True),
        ConvexNMF(verbose=0, solver="pgd", hspy_comp=True),
    ],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("hspy_comp", [False, True])
def test_feature_names_out(hspy_comp):
    import numpy as np

    X = np.random.default_rng(0).poisson(5.0, size=(20, 12)).astype(float)
    est = SmoothNMF(n_components=3, verbose=0, hspy_comp=hspy_comp, max_iter=5).fit(X)
    assert list(est.get_feature_names_out()) == ["smoothnmf0", "smoothnmf1", "smoothnmf2"]
