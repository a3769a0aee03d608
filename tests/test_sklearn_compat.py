"""scikit-learn's estimator checks, in both data orientations."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from espm_lite import SNMF, ConvexNMF, SmoothNMF

# Checks skipped, with the reason.
#
# check_transformer_general / check_transformer_data_not_an_array compare
# fit_transform(X) with fit(X).transform(X) to atol=1e-2.  With hspy_comp=True
# fit_transform returns the fitted maps, transform solves the (convex) map
# problem with the spectra fixed from a strictly positive start.  On the
# checks' 30 x 3 data some map entries end up locked near zero by the
# multiplicative updates (a known property of every MU-NMF) while their
# conditional optimum is ~0.05, so the two differ by ~0.05 even at tol=1e-8:
# transform finds the lower objective.  scikit-learn's own NMF differs by 0.18 on
# the same data.  The hspy_comp=False orientation passes both checks, and
# test_smoothnmf.py::test_transform_reproduces_fitted_maps checks the property
# on a realistic phantom.
SKIPPED = {
    (True, "check_transformer_general"): "MU zero-locking on 30x3 data, see above",
    (True, "check_transformer_data_not_an_array"): "MU zero-locking on 30x3 data, see above",
}


def _expected_failed(estimator):
    if not isinstance(estimator, SmoothNMF):
        return {}  # the others end on an exact solve of the sample-side factor
    return {name: reason for (hspy, name), reason in SKIPPED.items() if estimator.hspy_comp == hspy}


@parametrize_with_checks(
    [
        SmoothNMF(verbose=0),
        SmoothNMF(verbose=0, hspy_comp=True),
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
