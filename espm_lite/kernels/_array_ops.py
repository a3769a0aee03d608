"""Array operations of the kernels, for any array-API namespace.

The kernels are written against the array API standard (through
``array-api-compat``), so they run on NumPy, CuPy or PyTorch arrays alike;
:class:`ArrayOps` picks NumPy's preallocated-buffer forms (``out=``) when it
can.  The small ``xp`` helpers below are shared by the data pass and the
non-negative updates.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_namespace


class ArrayOps:
    """The array operations of the kernels, for one array-API namespace.

    The kernels are written against the array API standard (through
    ``array-api-compat``), so they run on NumPy, CuPy or PyTorch arrays alike.
    With NumPy, results go to preallocated buffers (``out=``) and
    :func:`data_pass` spreads blocks over threads; other namespaces allocate.
    """

    def __init__(self, *arrays):
        self.xp = array_namespace(*arrays)
        self.numpy = is_numpy_namespace(self.xp)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype) if self.numpy else None

    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out) if self.numpy and out is not None else a @ b

    def log(self, x, out=None):
        return np.log(x, out=out) if self.numpy and out is not None else self.xp.log(x)

    def divide(self, a, b, out=None):
        return np.divide(a, b, out=out) if self.numpy and out is not None else a / b

    def dot_all(self, a, b) -> float:
        """``sum(a * b)`` over all entries, as a Python float."""
        if self.numpy:
            return float(np.vdot(a, b))
        return float(self.xp.sum(a * b))

    def errstate(self):
        return np.errstate(divide="ignore", invalid="ignore") if self.numpy else nullcontext()


#: Up to this many columns, :func:`column_sums` and :func:`column_max` of a NumPy
#: array reduce column by column: a reduction along axis 0 of a tall, narrow
#: C-ordered array runs its inner loop over the few columns, 20-40 times slower.
NARROW_COLUMNS = 32


def column_sums(a, dtype=None):
    """Sums of the columns of a 2-D array (``a.sum(axis=0, dtype=dtype)``, fast for few columns)."""
    if isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[1] <= NARROW_COLUMNS:
        out = a.dtype if dtype is None else dtype
        return np.array([a[:, j].sum(dtype=dtype) for j in range(a.shape[1])], dtype=out)
    return array_namespace(a).sum(a, axis=0, dtype=dtype)


def column_means(a):
    """Means of the columns of a 2-D array (``a.mean(axis=0)``, fast for few columns)."""
    return column_sums(a) / a.shape[0]


def column_max(a):
    """Largest entry of each column of a 2-D array (``a.max(axis=0)``, fast for few columns)."""
    if isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[1] <= NARROW_COLUMNS:
        return np.array([a[:, j].max() for j in range(a.shape[1])], dtype=a.dtype)
    return array_namespace(a).max(a, axis=0)


def _float_mask(xp, free, dtype):
    """A boolean mask as 0/1 of ``dtype`` (the array API has no bool-float promotion)."""
    return None if free is None else xp.astype(free, dtype)


def _free_row_sums(xp, values, free, keepdims: bool = False):
    """Row sums of ``values`` over the free entries (all entries when ``free`` is None)."""
    mask = _float_mask(xp, free, values.dtype)
    return xp.sum(values if mask is None else values * mask, axis=1, keepdims=keepdims)


def _floored(xp, x, floor: float):
    """``max(x, floor)`` entry by entry."""
    return np.maximum(x, floor) if is_numpy_namespace(xp) else xp.clip(x, min=floor)


def _where_free(xp, free, x, fill: float):
    """``x`` on the free entries, ``fill`` elsewhere (``x`` when all are free)."""
    return x if free is None else xp.where(free, x, _scalar(xp, fill, x))


def _scalar(xp, value: float, like):
    """A 0-d array of ``value`` with the dtype and device of ``like``."""
    return xp.asarray(value, dtype=like.dtype, device=device(like))
