"""Choosing the number of phases: held-out Poisson deviance (espm_lite.model_selection)."""

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from espm_lite import SNMF, SmoothNMF, config_context
from espm_lite.datasets import make_spectrum_image
from espm_lite.kernels.missing import MissingEntries
from espm_lite.model_selection import (
    NComponentsScores,
    heldout_deviance,
    one_standard_error,
    select_n_components,
    speckle_folds,
)

SHAPE = (20, 20)


@pytest.fixture(scope="module")
def three_phases():
    return make_spectrum_image(
        shape_2d=SHAPE, n_channels=200, n_phases=3, counts_per_pixel=300, seed=2
    )


def _perturbed_phantom(k, seed=5):
    """Not the default generator: gradient maps and spectra through a channel response."""
    data = make_spectrum_image(
        shape_2d=SHAPE, n_channels=200, n_phases=k, map_kind="gradients", seed=seed
    )
    rng = np.random.default_rng(seed)
    response = np.exp(0.5 * np.cos(np.linspace(0, 4, 200)))[:, None]
    spectra = data.spectra * response
    return rng.poisson(300 * (spectra / spectra.sum(0)) @ data.maps).astype(float)


def test_true_number_of_phases_is_chosen(three_phases):
    result = select_n_components(
        three_phases.X, range(1, 6), shape_2d=SHAPE, random_state=0, progress=False
    )
    assert isinstance(result, NComponentsScores)
    assert result.n_components == 3
    assert result.scores.shape == (5, 3)
    assert result.mean[0] > result.mean[2]  # one phase misses structure
    assert np.all(result.sem >= 0) and result.std.shape == (5,)


def test_true_number_of_phases_on_a_perturbed_phantom():
    # (3 phases: four "gradients" maps on 20x20 pixels are close to rank 3, and 3 is chosen.)
    X = _perturbed_phantom(3)
    result = select_n_components(X, range(1, 6), shape_2d=SHAPE, random_state=1, progress=False)
    assert result.n_components == 3


def test_orientation_and_sparse_input_give_the_same_scores(three_phases):
    kw = dict(candidates=[2, 3], n_folds=2, random_state=3, progress=False, max_iter=10)
    a = select_n_components(three_phases.X, **kw)
    b = select_n_components(
        sp.csr_matrix(three_phases.X.T), estimator=SmoothNMF(hspy_comp=True), **kw
    )
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-8)


def test_folds_are_disjoint_speckles():
    folds = speckle_folds((30, 40), 3, 10, np.random.default_rng(0))
    total = sum(f.astype(int) for f in folds)
    assert total.max() == 1  # disjoint
    for f in folds:
        assert 0.06 < f.nnz / 1200 < 0.14
        assert np.diff(f.indptr).max() < 40  # single entries, never a whole pixel
    # 6400 pixels follow 64 channel patterns, so the masked fits group them; each
    # pixel and each channel loses about a tenth of its entries.
    fold = speckle_folds((6400, 300), 1, 10, np.random.default_rng(1))[0]
    assert MissingEntries(fold, np.float64).patterns.shape[0] <= 64
    assert 0.09 < fold.nnz / (6400 * 300) < 0.11
    per_channel = np.bincount(fold.indices, minlength=300) / 6400
    assert per_channel.min() > 0.06 and per_channel.max() < 0.14


def test_one_standard_error_rule_takes_the_smallest_close_candidate():
    candidates = np.array([1, 2, 3, 4])
    scores = np.array([[5.0, 5.2], [3.2, 2.9], [2.9, 3.25], [2.8, 3.1]])  # k=2: noisy, close
    chosen, best = one_standard_error(candidates, scores)
    assert best == 4 and chosen == 2


def test_heldout_deviance_is_zero_for_the_truth():
    rng = np.random.default_rng(0)
    est = SmoothNMF(2, hspy_comp=True)
    est.H_ = rng.random((2, 6))
    est.components_ = rng.random((2, 5))
    X = est.H_.T @ est.components_
    fold = sp.csr_matrix(rng.random((6, 5)) < 0.5)
    assert heldout_deviance(X, fold, est) == pytest.approx(0.0, abs=1e-12)
    assert heldout_deviance(X * 2, fold, est) > 0


@pytest.mark.parametrize("engine", ["numba", "numpy"])
@pytest.mark.parametrize("sparse", [False, True])
def test_heldout_deviance_is_the_mean_poisson_deviance_at_the_fold(sparse, engine):
    rng = np.random.default_rng(1)
    est = SmoothNMF(3, hspy_comp=True)
    est.H_ = rng.random((3, 40))
    est.components_ = rng.random((3, 30))
    Y = est.H_.T @ est.components_
    X = rng.poisson(Y).astype(float)  # zeros and counts
    held = rng.random(X.shape) < 0.3
    x, y = X[held], Y[held]
    terms = y - x + np.where(x > 0, x * np.log(np.where(x > 0, x, 1) / y), 0.0)
    expected = 2 * terms.sum() / held.sum()
    data = sp.csr_matrix(X) if sparse else X
    with config_context(engine=engine):
        deviance = heldout_deviance(data, sp.csr_matrix(held), est)
    assert deviance == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(candidates=[]), "candidates"),
        (dict(candidates=[0, 1]), "candidates"),
        (dict(candidates=[1.5]), "candidates"),
        (dict(candidates=[2, 2]), "candidates"),
        (dict(fraction=0.7), "fraction"),
        (dict(n_folds=0), "n_folds"),
        (dict(n_folds=11), "n_folds"),
        (dict(estimator=SNMF(2)), "SNMF does not fit masked data"),
    ],
)
def test_argument_validation(small_problem, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_n_components(small_problem, progress=False, **kwargs)


def test_result_plots(three_phases):
    result = select_n_components(
        three_phases.X, [1, 2], n_folds=2, max_iter=5, random_state=0, progress=False
    )
    ax = result.plot()
    assert ax.get_xlabel() == "number of phases k"


@pytest.mark.usefixtures("quiet_convergence")
def test_hyperspy_signal_estimates_and_decomposes(three_phases, caplog):
    s = three_phases.to_signal("spectrum_image")
    result = s.estimate_n_components(range(1, 5), random_state=0, progress=False, plot=True)
    assert result.n_components == 3 and s.n_components_scores is result
    assert s.plot_n_components_scores() is not None
    with caplog.at_level(logging.INFO, logger="espm_lite"):
        s.decomposition(output_dimension="auto", verbose=0, max_iter=50)
    assert s.learning_results.factors.shape[1] == 3
    assert "output_dimension='auto'" in caplog.text


@pytest.mark.usefixtures("quiet_convergence")
def test_a_lazy_signal_is_scored_within_max_memory(three_phases):
    s = three_phases.to_signal("spectrum_image").as_lazy()
    eager = three_phases.to_signal("spectrum_image")
    options = dict(candidates=[2, 3], n_folds=2, max_iter=20, random_state=0, progress=False)
    lazy = s.estimate_n_components(max_memory="100MB", **options)
    np.testing.assert_allclose(lazy.scores, eager.estimate_n_components(**options).scores)
    with pytest.raises(MemoryError, match="max_memory='10kB'.*s.inav"):
        s.estimate_n_components(max_memory="10kB", **options)
