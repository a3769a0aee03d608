"""scikit-learn's estimator checks, in both data orientations, and espm's documented settings.

PNMF's checks, the longest, are in ``test_sklearn_compat_pnmf.py``: the test command runs
each file on one worker (``--dist loadfile``).
"""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from espm_lite import SNMF, ConvexNMF, SmoothNMF

# Every estimator ends its fit with the solve of the sample-side factor that
# transform uses, so fit_transform(X) and fit(X).transform(X) agree: no check is
# expected to fail.


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
        SmoothNMF(verbose=0, hspy_comp=True, partial_fit_rounds=2),
        SNMF(verbose=0),
        SNMF(verbose=0, hspy_comp=True),
        ConvexNMF(verbose=0),
        ConvexNMF(verbose=0, hspy_comp=True),
        ConvexNMF(verbose=0, solver="pgd", hspy_comp=True),
    ],
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("hspy_comp", [False, True])
def test_feature_names_out(hspy_comp):
    import numpy as np

    X = np.random.default_rng(0).poisson(5.0, size=(20, 12)).astype(float)
    est = SmoothNMF(n_components=3, verbose=0, hspy_comp=hspy_comp, max_iter=5).fit(X)
    assert list(est.get_feature_names_out()) == ["smoothnmf0", "smoothnmf1", "smoothnmf2"]
