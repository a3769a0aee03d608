"""Updates of a non-negative factor, optionally with rows on the simplex.

* the exact simplex projection by bisection on a Lagrange multiplier
  (:func:`bisect_multiplier`),
* the multiplicative / quadratic-root / projected-gradient updates of a
  non-negative factor (:func:`mu_update`, :func:`quadratic_root_update`,
  :func:`projected_step`).

All of them run on any array-API namespace.
"""

from __future__ import annotations

from collections.abc import Callable

from array_api_compat import array_namespace

from ._array_ops import ArrayOps, _float_mask, _floored, _free_row_sums, _scalar, _where_free


def bisect_multiplier(
    values_at: Callable,
    lower,
    upper,
    free,
    tol: float,
    max_iter: int = 200,
):
    """Find, row by row, the multiplier ``nu`` such that ``sum(values_at(nu)) = 1``.

    ``values_at(nu)`` returns an array ``(r, c)`` whose row sums (over the free
    entries) decrease with ``nu`` (one multiplier per row).  The bracket
    ``[lower, upper]`` must satisfy ``sum >= 1`` at ``lower`` and ``sum <= 1``
    at ``upper``; rows where this fails are reported with ``nan``.  Any
    array-API namespace; the multiplier is computed in float64.

    Returns
    -------
    nu : array (r,)
        Multiplier per row, such that ``|sum - 1| <= tol`` (or the bracket has
        collapsed to machine precision).
    """
    xp = array_namespace(lower, upper)
    lo = xp.astype(lower, xp.float64)
    hi = xp.astype(upper, xp.float64)
    # A row without free entries has the empty bracket (inf, -inf): bisect it at 0
    # (no inf - inf) and report it with nan like any other failed row.
    empty = ~(xp.isfinite(lo) & xp.isfinite(hi))
    zero = _scalar(xp, 0.0, lo)
    lo, hi = xp.where(empty, zero, lo), xp.where(empty, zero, hi)

    def row_sums(nu):
        return _free_row_sums(xp, values_at(nu), free)

    bad = empty | (row_sums(lo) < 1.0 - tol) | (row_sums(hi) > 1.0 + tol)
    nu = 0.5 * (lo + hi)
    for _ in range(max_iter):
        nu = 0.5 * (lo + hi)
        err = row_sums(nu) - 1.0
        if bool(xp.all((xp.abs(err) <= tol) | bad)):
            break
        above = err > 0
        lo = xp.where(above, nu, lo)
        hi = xp.where(above, hi, nu)
    return xp.where(bad, _scalar(xp, float("nan"), nu), nu)


def mu_update(
    current,
    negative,
    positive,
    *,
    floor: float,
    simplex: bool = False,
    free=None,
    tol: float = 1e-5,
):
    """Multiplicative update ``x <- x * negative / (positive + nu)``, floored.

    With ``simplex=True`` one multiplier ``nu`` per row makes every row (its
    ``free`` entries) sum to one: the exact minimiser of the separable
    majoriser on the simplex.  Rows where no multiplier exists (all-zero
    numerator) keep their current values.  Any array-API namespace.

    Parameters
    ----------
    current, negative, positive : arrays (r, c)
        Current value, numerator and denominator terms (``positive > 0``).
    floor : float
        Lower bound of every entry.
    simplex : bool
    free : bool array (r, c), optional
        Entries that count in the simplex sums (default all).
    tol : float
        Tolerance of the row sums.
    """
    ops = ArrayOps(current, negative)
    xp = ops.xp
    numerator = current * negative
    if not simplex:
        return _floored(xp, numerator / positive, floor)

    def values_at(nu):
        return _floored(xp, numerator / (positive + _shift(xp, nu, free)), floor)

    inf = float("inf")
    lower = -xp.min(_where_free(xp, free, positive, inf), axis=1) * (1 - 1e-12)
    num_sum = xp.sum(_where_free(xp, free, numerator, 0.0), axis=1)
    upper = xp.clip(num_sum, min=0.0) + xp.abs(lower) + 1.0
    # Tighter bracket from the sum S of the free numerators: with P the largest
    # (smallest) free denominator term, sum_i num_i / (pos_i + nu) >= S / (P + nu)
    # (<=), so the sum is >= 1 at nu = S - P_max, and <= 1 at nu = S - P_min when
    # the floors do not bind (checked).  When the denominators of a row are
    # equal (the W update with G = I) this is the exact root.
    pos_free_max = xp.max(_where_free(xp, free, positive, -inf), axis=1)
    with ops.errstate():
        tight_lower = xp.where(num_sum > 0, xp.maximum(lower, num_sum - pos_free_max), lower)
        tight_upper = xp.maximum(num_sum + lower / (1 - 1e-12), tight_lower)
        sums = _free_row_sums(xp, values_at(tight_upper), free)
    fits = sums <= 1.0 + tol
    if bool(xp.all(fits & (sums >= 1.0 - tol))):  # the exact root (G = I): no bisection
        return _apply_multiplier(values_at, tight_upper, current, free)
    upper = xp.where(fits & (tight_upper < upper), tight_upper, upper)
    nu = bisect_multiplier(values_at, tight_lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def quadratic_root_update(
    current, a: float, b, c, *, floor: float, simplex: bool = False, free=None, tol: float = 1e-5
):
    """Positive root of ``a x^2 + (b + nu) x - c = 0`` entry by entry, floored.

    ``a >= 0`` and ``c >= 0``.  With ``a = 0`` this is ``c / (b + nu)``.  The
    root is computed in the cancellation-free form ``2c / (b + sqrt(b^2+4ac))``
    when ``b >= 0``.  ``simplex`` and ``free`` as in :func:`mu_update`.  Any
    array-API namespace.
    """
    ops = ArrayOps(current, b, c)
    xp = ops.xp

    def values_at(nu):
        bb = b if nu is None else b + _shift(xp, nu, free)
        disc = xp.sqrt(bb * bb + 4.0 * a * c)
        with ops.errstate():
            if a > 0:
                root = xp.where(bb >= 0, 2.0 * c / (bb + disc), (disc - bb) / (2.0 * a))
            else:
                root = c / bb
        root = xp.where(xp.isfinite(root), root, _scalar(xp, floor, root))
        return _floored(xp, root, floor)

    if not simplex:
        return values_at(None)
    inf = float("inf")
    b_free = _where_free(xp, free, b, inf)
    if a > 0:
        # The root grows without bound as nu -> -inf: expand a bracket.
        lower = -xp.max(xp.abs(_where_free(xp, free, b, 0.0)), axis=1) - 1.0
        for _ in range(200):
            sums = _free_row_sums(xp, values_at(lower), free)
            if bool(xp.all(sums >= 1.0)):
                break
            lower = xp.where(sums < 1.0, 2.0 * lower - 1.0, lower)
    else:
        lower = -xp.min(b_free, axis=1) * (1 - 1e-12)
    # With b + nu >= sum(c) every root is <= c / sum(c): the sum is <= 1.
    c_sum = xp.sum(_where_free(xp, free, c, 0.0), axis=1)
    upper = xp.max(xp.abs(b), axis=1) + c_sum + 1.0
    nu = bisect_multiplier(values_at, lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def projected_step(
    current, gradient, step, *, floor: float, simplex: bool = False, free=None, tol: float = 1e-5
):
    """Gradient step ``x - step * gradient`` projected on ``{x >= floor}``.

    With ``simplex=True`` the projection is the Euclidean projection on
    ``{x >= floor, sum of the free entries of each row = 1}``, found by
    bisection on the shift ``nu`` of ``max(z - nu, floor)``.  Any array-API
    namespace.
    """
    xp = array_namespace(current, gradient)
    z = current - step * gradient
    if not simplex:
        return _floored(xp, z, floor)

    def values_at(nu):
        return _floored(xp, z - _shift(xp, nu, free), floor)

    inf = float("inf")
    # At nu = min(z) - 1 every free entry is >= 1; at nu = max(z) all are at the floor.
    lower = xp.min(_where_free(xp, free, z, inf), axis=1) - 1.0
    upper = xp.max(_where_free(xp, free, z, -inf), axis=1)
    nu = bisect_multiplier(values_at, lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def _shift(xp, nu, free):
    """The multiplier of each row, on its free entries only."""
    column = nu[:, None]
    return column if free is None else column * _float_mask(xp, free, nu.dtype)


def _apply_multiplier(values_at, nu, current, free=None):
    """Values at the multipliers found, renormalised so the free sums are exactly one.

    The bisection stops within ``tol`` of the constraint; dividing by the sum
    then makes the iterate feasible while changing the majoriser only to
    second order (its gradient at the constrained minimum is normal to the
    simplex), which keeps the objective non-increasing.  Rows without a
    multiplier keep ``current``.
    """
    xp = array_namespace(nu, current)
    ok = xp.isfinite(nu)
    out = values_at(xp.where(ok, nu, xp.zeros_like(nu)))
    sums = _free_row_sums(xp, out, free, keepdims=True)
    positive = sums > 0
    scale = xp.where(
        positive, 1.0 / xp.where(positive, sums, xp.ones_like(sums)), xp.ones_like(sums)
    )
    out = out * scale if free is None else xp.where(free, out * scale, out)
    out = xp.where(ok[:, None], out, xp.astype(current, out.dtype))
    return xp.astype(out, current.dtype, copy=False)
