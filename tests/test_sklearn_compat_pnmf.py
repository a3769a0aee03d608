"""scikit-learn's estimator checks for PNMF, in both data orientations.

A file of its own so that the test workers share the estimator checks
(``--dist loadfile``): on the checks' rank-one 30 x 3 data PNMF runs most of its
default 10000 iterations. Its second phase dies there; its spectrum stays at the
floor instead of being made a uniform unit column, so that ``transform`` solves it
back to the same point and ``fit_transform(X)`` equals ``fit(X).transform(X)``.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from espm_lite import PNMF


@parametrize_with_checks([PNMF(verbose=0), PNMF(verbose=0, hspy_comp=True)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
