"""Warnings about a finished fit: empty phases."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from espm_lite import PNMF, EmptyPhaseWarning, SmoothNMF
from espm_lite._diagnostics import empty_phases


def test_empty_phases_measures_each_phase_share():
    spectra = np.array([[1.0, 1e-14, -0.5], [2.0, 1e-14, 0.5]])
    maps = np.array([[1.0, 1e-13, 1.0], [1.0, 1e-13, 1.0]])
    # phase 1 carries ~1e-27 of the model; phase 2 is signed with a zero sum, not empty
    assert empty_phases(spectra, maps).tolist() == [1]
    assert empty_phases(spectra, np.zeros_like(maps)).size == 0  # no model at all: no claim


def test_a_phase_the_data_do_not_support_is_reported():
    # Points along one line (scikit-learn's check data): PNMF's second phase dies.
    X, _ = make_blobs(30, centers=[[0, 0, 0], [1, 1, 1]], random_state=0, cluster_std=0.1)
    X -= X.min()
    with pytest.warns(EmptyPhaseWarning, match=r"phase\(s\) \[1\] of 2"):
        PNMF(n_components=2, verbose=0, random_state=0).fit(X)


def test_no_warning_when_every_phase_is_used(small_problem):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyPhaseWarning)
        est = SmoothNMF(3, max_iter=50, verbose=0, random_state=0).fit(small_problem)
    assert empty_phases(est.W_, est.H_.T).size == 0
