"""The update kernels run on any array-API namespace (checked with array-api-strict)."""

import numpy as np
import pytest

from espm_lite import kernels

xps = pytest.importorskip("array_api_strict")


def to_numpy(x):
    return np.from_dlpack(x)


def problem(seed=0, r=7, c=4):
    rng = np.random.default_rng(seed)
    current = rng.random((r, c)) + 0.1
    negative = rng.random((r, c)) + 0.1
    positive = rng.random((r, c)) + 0.5
    free = rng.random((r, c)) > 0.2
    free[:, 0] = True
    return current, negative, positive, free


@pytest.mark.parametrize("simplex", [False, True])
@pytest.mark.parametrize("with_free", [False, True])
def test_update_rules_match_numpy(simplex, with_free):
    current, negative, positive, free = problem()
    free = free if with_free else None
    strict = [xps.asarray(a) for a in (current, negative, positive)]
    free_s = None if free is None else xps.asarray(free)
    common = dict(floor=1e-12, simplex=simplex, tol=1e-9)

    got = kernels.mu_update(*strict, free=free_s, **common)
    want = kernels.mu_update(current, negative, positive, free=free, **common)
    assert not isinstance(got, np.ndarray)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12)

    got = kernels.quadratic_root_update(
        strict[0], 0.7, strict[2] - 0.3, strict[1], free=free_s, **common
    )
    want = kernels.quadratic_root_update(
        current, 0.7, positive - 0.3, negative, free=free, **common
    )
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12)

    got = kernels.projected_step(strict[0], strict[1] - 0.5, 0.3, free=free_s, **common)
    want = kernels.projected_step(current, negative - 0.5, 0.3, free=free, **common)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12)
    if simplex:
        mask = np.ones_like(want, dtype=bool) if free is None else free
        np.testing.assert_allclose((want * mask).sum(axis=1), 1.0, rtol=1e-9)


@pytest.mark.parametrize("loss", ["kl", "l2"])
def test_data_pass_matches_numpy(loss):
    rng = np.random.default_rng(1)
    p, n, k = 50, 30, 3
    X = rng.poisson(3.0, size=(p, n)).astype(np.float64)
    A = rng.random((p, k)) + 0.1
    D = rng.random((n, k)) + 0.1
    constants = kernels.data_constants(X, loss)

    def rule_for(A_array):
        def rule(rows, negative, positive, curvature):
            return kernels.mu_update(
                A_array[rows, :], negative, positive, floor=1e-12, simplex=True, tol=1e-10
            )

        return rule

    A_np = A.copy()
    want = kernels.data_pass(
        X, A_np, D, loss=loss, map_rule=rule_for(A_np), need_curvature=True, x_constants=constants
    )
    A_s = xps.asarray(A.copy())
    got = kernels.data_pass(
        xps.asarray(X),
        A_s,
        xps.asarray(D),
        loss=loss,
        map_rule=rule_for(A_s),
        need_curvature=True,
        x_constants=constants,
    )
    np.testing.assert_allclose(got.data_loss, want.data_loss, rtol=1e-10)
    np.testing.assert_allclose(to_numpy(got.w_negative), want.w_negative, rtol=1e-10)
    np.testing.assert_allclose(to_numpy(A_s), A_np, rtol=1e-10)


@pytest.mark.parametrize("floor", [1e-12, 1e-3])
def test_simplex_update_with_equal_denominators_is_the_normalised_numerator(floor):
    """With the same denominator along a row (the W update without G) the simplex
    update is ``x * negative`` divided by its row sum, unless that puts entries under
    the floor: then the bisection finds the multiplier of the floored sum."""
    rng = np.random.default_rng(3)
    current = rng.random((3, 40)) + 0.1
    negative = rng.random((3, 40))
    negative[:, :4] = 1e-6  # entries that a floor of 1e-3 binds
    positive = np.repeat(rng.random((3, 1)) + 0.5, 40, axis=1)
    got = kernels.mu_update(current, negative, positive, floor=floor, simplex=True, tol=1e-9)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    assert got.min() >= floor * (1 - 1e-8)  # the renormalisation moves floored entries by tol
    numerator = current * negative
    unfloored = numerator / numerator.sum(axis=1, keepdims=True)
    if floor < unfloored.min():
        np.testing.assert_allclose(got, unfloored, rtol=1e-12)
    else:  # the free entries keep their ratios, rescaled to what the floored ones leave
        for row in range(3):
            free = unfloored[row] > 2 * floor
            ratio = got[row, free] / unfloored[row, free]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
            assert ratio[0] < 1
