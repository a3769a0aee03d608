"""The stopping rule of the shared loop (espm_lite._loop): relative change of the factors.

The benchmark of the rule against converged fits is ``benchmarks/bench_stopping.py``;
these tests only check its contract on small phantoms.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from espm_lite import PNMF, SNMF, ConvexNMF, SmoothNMF
from espm_lite._extrapolation import RATIO_LIMIT, extrapolate
from espm_lite._loop import STOP_WINDOW, factor_change, run
from espm_lite.datasets import make_spectrum_image
from espm_lite.measures import matched_angles

SHAPE = (12, 12)


@pytest.fixture(scope="module")
def phantom():
    return make_spectrum_image(
        shape_2d=SHAPE, n_channels=96, n_phases=2, counts_per_pixel=500, seed=2
    )


def _fit(cls, X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(n_components=2, random_state=0, verbose=0, **params)
        spectra = est.fit_transform(X)
    return est, spectra


def test_default_fit_is_close_to_a_converged_fit(phantom):
    """The defaults reach the converged answer (0.5 degree target of bench_stopping.py).

    The plain multiplicative updates with the old default (1.7 degrees on this
    phantom) drift for thousands of iterations after the factors look stationary.
    """
    default, spectra = _fit(SmoothNMF, phantom.X)
    reference, ref_spectra = _fit(SmoothNMF, phantom.X, tol=1e-10, max_iter=20000)
    loose = _fit(SmoothNMF, phantom.X, tol=1e-3)[1]
    assert default.n_iter_ < reference.n_iter_
    angles = matched_angles(ref_spectra, spectra).max()
    assert angles < 0.5
    assert angles < 0.1 * matched_angles(ref_spectra, loose).max()


@pytest.mark.parametrize("cls", [SmoothNMF, PNMF, ConvexNMF, SNMF])
def test_acceleration_keeps_the_fit_monotone_and_saves_iterations(phantom, cls):
    X = phantom.X - 0.5 * phantom.X.mean(axis=1, keepdims=True) if cls is SNMF else phantom.X
    fast, fast_spectra = _fit(cls, X, tol=1e-6)
    plain, plain_spectra = _fit(cls, X, tol=1e-6, accelerate=False)
    losses = fast.losses_
    assert np.all(np.diff(losses) <= 1e-12 * np.abs(losses[1:]))
    assert fast.n_iter_ < plain.n_iter_
    assert losses[-1] <= plain.losses_[-1] + 1e-6 * abs(plain.losses_[-1])


def test_extrapolation_keeps_entries_that_did_not_move():
    rng = np.random.default_rng(0)
    old = rng.random((6, 3)) + 0.1
    new = old * rng.uniform(0.5, 2.0, old.shape)
    new[0] = old[0]  # e.g. fixed entries
    z = new.copy()
    extrapolate(z, old, 0.7, "ratio")
    assert np.all(z > 0)
    assert np.array_equal(z[0], old[0])
    np.testing.assert_allclose(z[1:], new[1:] * (new[1:] / old[1:]) ** 0.7)
    signed = new - 1.0
    z = signed.copy()
    extrapolate(z, old - 1.0, 0.5, "difference")
    np.testing.assert_allclose(z, signed + 0.5 * (signed - (old - 1.0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 0.37, 1.0])
def test_the_ratio_extrapolation_is_its_formula(dtype, beta):
    rng = np.random.default_rng(3)
    shape = (1000, 3)
    old = (rng.random(shape) + 0.01).astype(dtype)
    z = (old * (1 + 0.1 * rng.standard_normal(shape))).astype(dtype)
    old[::7] = 0.0  # not > 0: ratio 1
    old[1::13] = np.nan  # not > 0: ratio 1
    z[2::11] *= 50  # clipped above
    z[3::17] /= 50  # clipped below
    z[4::19] = old[4::19]  # did not move
    before = z.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(old > 0, z / old, 1.0)
    limit = RATIO_LIMIT
    expected = z * np.power(np.clip(ratio, 1 / limit, limit), beta, dtype=dtype)
    extrapolate(z, old, beta, "ratio")
    assert z.dtype == dtype
    np.testing.assert_array_equal(z, expected)  # the same operations, in one buffer
    np.testing.assert_array_equal(z[::7], before[::7])  # ratio 1 keeps the entry
    rows = np.arange(shape[0])
    above = (rows % 11 == 2) & (rows % 7 != 0) & (rows % 13 != 1) & (rows % 17 != 3)
    above &= rows % 19 != 4
    np.testing.assert_allclose(  # clipped at RATIO_LIMIT = 10
        z[above], before[above] * dtype(10.0) ** dtype(beta), rtol=1e-6
    )


@pytest.mark.parametrize("cls", [ConvexNMF, SNMF])
def test_rule_is_scale_invariant(phantom, cls):
    # Frobenius estimators: their iterates are scale-equivariant, so the rule
    # must stop them at the same iteration. SNMF gets signed data of full rank
    # (fully centred data of sum-to-one abundances have rank k - 1).
    X = phantom.X - 0.5 * phantom.X.mean(axis=1, keepdims=True) if cls is SNMF else phantom.X
    a, _ = _fit(cls, X, tol=1e-4, max_iter=2000)
    b, _ = _fit(cls, X * 1e6, tol=1e-4, max_iter=2000)
    assert a.n_iter_ < 2000
    assert a.n_iter_ == b.n_iter_


def test_factor_change_is_scale_free():
    rng = np.random.default_rng(0)
    old = (rng.random((5, 2)), rng.random((7, 2)))
    new = (old[0] * 1.01, old[1] + 0.001)
    delta = factor_change(old, new)
    assert delta == pytest.approx(factor_change(*(tuple(a * 1e6 for a in f) for f in (old, new))))
    assert delta == pytest.approx(0.01 / 1.01)


def test_stops_after_a_window_of_calm_iterations(phantom):
    est, _ = _fit(SmoothNMF, phantom.X, tol=1e3, max_iter=200, accelerate=False)
    assert est.n_iter_ == STOP_WINDOW


class _Moving:
    """A state whose spectra are scaled by ``factors[t % len(factors)]`` at step ``t``
    (objective constant): a cycle on the spot, or a steady drift."""

    names = ("data",)

    def __init__(self, factors):
        self.factors, self.t = factors, 0

    def step(self, problem, state):
        state.D *= self.factors[self.t % len(self.factors)]
        self.t += 1
        return {"data": 1.0}

    def objective(self, problem, state):
        return {"data": 1.0}

    def monitored(self, problem, state):
        return state.D, state.M

    def extrapolated(self, problem):
        return {}

    def on_increase(self, state):
        return False


class _State:
    def __init__(self):
        self.D, self.M = np.ones((5, 2)), np.ones((7, 2))

    def snapshot(self):
        return self.D.copy()

    def restore(self, snapshot):
        self.D = snapshot.copy()

    def finite(self):
        return True


class _Problem:
    n_entries = 35


@pytest.mark.parametrize("cycle", [(1.1, 1 / 1.1), (1.00001, 1 / 1.00001)])
def test_iterates_that_cycle_on_the_spot_stop_on_their_net_change(cycle):
    """Each step moves the factors above ``tol``, but they come back: the net-change
    test stops the loop at its first check (the factors of the first iteration against
    those 50 iterations later), with no ConvergenceWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        history = run(_Moving(cycle), _Problem(), _State(), tol=1e-6, max_iter=5000, verbose=0)
    assert history.converged and history.n_iter == STOP_WINDOW + 1
    assert history.calm == 0  # the per-step test alone would never have stopped


@pytest.mark.parametrize("cycle", [(1 + 2e-6,), (1.1, (1 + 1e-7) / 1.1)])
def test_a_drift_above_tol_per_window_is_not_stopped(cycle):
    """A steady drift above ``tol`` per step, or a cycle that drifts ``2.5 tol`` per window."""
    with pytest.warns(ConvergenceWarning, match="max_iter=400"):
        history = run(_Moving(cycle), _Problem(), _State(), tol=1e-6, max_iter=400, verbose=0)
    assert not history.converged and history.n_iter == 400


def test_history_records_factor_and_objective_changes(phantom):
    est, _ = _fit(PNMF, phantom.X, tol=1e-4, max_iter=500)
    history = est.get_losses()
    assert {"rel_change", "factor_change"} <= set(history.dtype.names)
    tail = history["factor_change"][-STOP_WINDOW // 2 :]  # (rows skip refused extrapolations)
    assert np.all(tail < 1e-4)
    assert np.all(np.isfinite(history["factor_change"][1:]))


def test_max_iter_warns_convergence_warning(phantom):
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        est = SmoothNMF(n_components=2, tol=1e-9, max_iter=5, random_state=0, verbose=0)
        est.fit(phantom.X)
    assert est.n_iter_ == 5


def test_no_stop_criterion_runs_max_iter_without_warning(phantom):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = SmoothNMF(
            n_components=2, tol=1.0, max_iter=30, no_stop_criterion=True, verbose=0
        ).fit(phantom.X)
    assert est.n_iter_ == 30


def test_ctrl_c_ends_the_fit_on_the_last_complete_iterate(phantom, monkeypatch):
    from espm_lite.solvers.smooth_kl import SmoothKL

    X = phantom.X.T
    params = dict(n_components=3, hspy_comp=True, random_state=0, verbose=0)
    five = SmoothNMF(max_iter=5, no_stop_criterion=True, **params).fit(X)
    step, calls = SmoothKL.step, []

    def interrupted_step(self, problem, state):
        calls.append(1)
        if len(calls) == 6:  # Ctrl-C during the sixth pass over the data
            state.A[:] = np.nan  # a half-done update that must not survive
            raise KeyboardInterrupt
        return step(self, problem, state)

    monkeypatch.setattr(SmoothKL, "step", interrupted_step)
    with pytest.warns(ConvergenceWarning, match="interrupted after iteration 5"):
        est = SmoothNMF(**params).fit(X)
    assert est.n_iter_ == 5
    np.testing.assert_allclose(est.W_, five.W_, rtol=1e-12)
    np.testing.assert_allclose(est.H_, five.H_, rtol=1e-12)
