r"""One pass over the data: data term, map update and spectra-gradient terms.

:func:`data_pass` evaluates the data terms (generalised Kullback-Leibler and
Frobenius) in one cache-friendly pass over the data, pixel block by pixel
block.  For each block ``b`` of pixels, with ``Y_b = A_b D^T``, it computes

* the data term at the current iterate (KL: ``sum X log X - X log Y - X + Y``;
  Frobenius: ``1/2 ||X - Y||^2``),
* the negative/positive parts of the gradient of the data term in ``A_b``
  (KL: ``R_b D`` and ``1^T D`` with ``R = X / Y``; Frobenius: ``X_b D`` and
  ``A_b D^T D``), handed to ``map_rule`` which returns the new ``A_b``
  (written into ``A`` in place),
* with the new ``A_b``, the negative part of the gradient in ``D``
  (KL: ``R'_b^T A_b``, Frobenius: ``X_b^T A_b``), summed over blocks.

The two half-steps share one read of each data block while it is in cache (one
compiled loop with SmoothNMF's default rule: :mod:`.fused`), no ``(n, p)``
temporary is formed, and the blocks are spread over :func:`num_threads`
threads (NumPy and SciPy release the GIL in their kernels):
each thread runs :func:`_dense_blocks` or :func:`_sparse_blocks` on every
``threads``-th block, and the partial sums are added in thread order.

Sparse path
-----------
With ``X`` a :class:`~espm_lite.kernels.SparseData` (or a sparse matrix) the
model is evaluated only at the stored entries ``(i, j)`` of the block,

.. math:: y_{ij} = \sum_l A_{il} D_{jl},

the KL terms are ``-sum_ij x_ij log y_ij`` (``sum Y = 1^T D^T A 1`` and
``sum X log X - sum X`` come from column sums and ``x_constants``), ``R`` is
the CSR matrix of ``x_ij / y_ij`` with the structure of ``X``, and the products
``R_b D``, ``R_b^T A_b``, ``(X / Y^2)_b`` times the Hessian rows, ``X_b D`` and
``X_b^T A_b`` are sparse-times-dense: ``O(nnz k)`` time, no ``(rows, n)``
buffer, the data never densified.  Both paths give the same results up to
rounding.

Missing entries
---------------
With ``missing`` (a :class:`~espm_lite.kernels.missing.MissingEntries`; the
data are zero at those entries) the data term and the gradient terms are
those of the observed entries only.  The pass itself is unchanged: each block
calls :func:`espm_lite.kernels.missing.map_terms` (map terms and loss) and
:func:`~espm_lite.kernels.missing.spectra_removed` (spectra terms), the one
place where the mask acts, at ``O(missing k)`` per pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import scipy.sparse as sp
from array_api_compat import array_namespace, device

from . import compiled as _compiled
from . import fused as _fused
from . import missing as _missing
from ._array_ops import ArrayOps, column_sums
from .chunked import BandView, ChunkedData
from .sparse_data import (
    BLOCK_BYTES,
    SparseData,
    SparseRowBlock,
    csr_like,
    dense_block,
    model_at,
    row_blocks,
)
from .threads import num_threads, run_parts

#: The same as :data:`~espm_lite.kernels.sparse_data.BLOCK_BYTES` for other array
#: libraries (GPUs): large blocks, so that each kernel launch has enough work, within a
#: bounded memory for the block temporaries.
DEVICE_BLOCK_BYTES = 1 << 28


@dataclass
class PassResult:
    """What one pass over the data returns.

    Attributes
    ----------
    data_loss : float or None
        Data term at the iterate *before* the maps were updated (None if not asked).
    w_negative : ndarray (n, k) or None
        Negative part of the gradient in ``D`` at the updated maps:
        ``R^T A`` (KL) or ``X^T A`` (Frobenius), before multiplication by ``G^T``.
    w_removed : ndarray (n, k) or None
        With missing entries: what they remove from the positive part of the
        gradient in ``D`` (see :func:`espm_lite.kernels.missing.spectra_removed`);
        None without.
    """

    data_loss: float | None
    w_negative: np.ndarray | None
    w_removed: np.ndarray | None = None


MapRule = Callable[[slice, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class _PassContext:
    """What every block of one pass reads, set up once by :func:`_setup`.

    Attributes
    ----------
    X : ndarray, SparseData or DensifiedRows (p, n)
    A, D, Dt : arrays (p, k), (n, k), (k, n)
        Maps (updated in place), spectra and their contiguous transpose.
    loss, map_rule, need_w_terms, need_loss
        As in :func:`data_pass`.
    ops : ArrayOps
    col_d : array (k,)
        Column sums of ``D``.
    gram_d : array (k, k) or None
        ``D^T D`` (Frobenius).
    outer_rows : array (n, k * k) or None
        Rows ``D_i (x) D_i`` (KL curvature).
    l2_curvature : float or None
        Largest eigenvalue of ``D^T D`` (Frobenius curvature).
    missing : MissingEntries or None
        Entries left out of the data term.
    missing_sums : array (u, k) or None
        :func:`espm_lite.kernels.missing.pattern_sums` of ``D`` (rows that share
        their missing columns), made once per pass.
    compiled : bool
        Whether the sparse KL blocks run the compiled kernels
        (:mod:`espm_lite.kernels.compiled`).
    fused : MultiplicativeMapRule or None
        The map rule's ``compiled_form``, when the compiled kernels run it
        inside the pass (:func:`~espm_lite.kernels.fused.kl_fused_map_update`).
    """

    X: object
    A: np.ndarray
    D: np.ndarray
    Dt: np.ndarray
    loss: str
    map_rule: MapRule | None
    need_w_terms: bool
    need_loss: bool
    ops: ArrayOps
    col_d: np.ndarray
    gram_d: np.ndarray | None
    outer_rows: np.ndarray | None
    l2_curvature: float | None
    missing: _missing.MissingEntries | None = None
    missing_sums: np.ndarray | None = None
    compiled: bool = False
    fused: _fused.MultiplicativeMapRule | None = None

    @property
    def xp(self):
        return self.ops.xp

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def k(self) -> int:
        return self.A.shape[1]

    @property
    def dtype(self):
        return self.A.dtype


def data_pass(
    X,
    A: np.ndarray,
    D: np.ndarray,
    *,
    loss: str = "kl",
    map_rule: MapRule | None = None,
    need_curvature: bool = False,
    need_w_terms: bool = True,
    need_loss: bool = True,
    x_constants: tuple[float, float] = (0.0, 0.0),
    missing: _missing.MissingEntries | None = None,
) -> PassResult:
    """One pass over the data: data term, map update and spectra-gradient terms.

    See the module docstring of :mod:`espm_lite.kernels.data_pass` for what is
    computed per block of pixels and for the sparse path.

    Parameters
    ----------
    X : ndarray, sparse matrix, SparseData or DensifiedRows of shape (p, n)
        Data, never written to.  A sparse matrix takes the sparse path (split
        into blocks at each call: prefer a :class:`SparseData` made once).
    A : ndarray of shape (p, k)
        Maps, updated in place when ``map_rule`` is given.
    D : ndarray of shape (n, k)
        Spectra in channel space, all entries > 0.
    loss : {"kl", "l2"}
    map_rule : callable, optional
        ``map_rule(rows, negative, positive, curvature) -> new A[rows]``; it
        must only read ``A[rows]`` (other blocks may already be updated). A
        rule whose ``compiled_form`` attribute is a
        :class:`~espm_lite.kernels.fused.MultiplicativeMapRule` (the same
        update) is run inside the compiled kernels on the sparse KL path.
    need_curvature : bool
        Also hand ``map_rule`` the per-pixel curvature of the data term at the
        current iterate: the largest eigenvalue of its Hessian in the maps
        (KL: ``sum_i X_ij / Y_ij^2 D_i D_i^T``; Frobenius: ``D^T D``).
    need_w_terms, need_loss : bool
        Whether to accumulate the spectra terms / the data term.
    x_constants : (float, float)
        ``(sum X log X, sum X)`` for the KL loss; ``(||X||^2, 0)`` for Frobenius.
    missing : MissingEntries, optional
        Entries left out of the fit (``X`` must be zero there): the data term
        and the gradient terms are then those of the observed entries, and
        ``PassResult.w_removed`` holds what the missing entries remove from the
        positive part of the gradient in ``D``. NumPy arrays only.

    Returns
    -------
    PassResult
    """
    if sp.issparse(X):
        X = SparseData(X)
    ctx = _setup(X, A, D, loss, map_rule, need_curvature, need_w_terms, need_loss, missing)
    ops = ctx.ops
    total = 0.0
    if need_loss and loss == "kl":
        total = x_constants[0] - x_constants[1] + ops.dot_all(ctx.col_d, column_sums(A))
    if need_loss and loss == "l2":
        total = 0.5 * x_constants[0] + 0.5 * ops.dot_all(A.T @ A, ctx.gram_d)
    results = _run_blocks(ctx)
    total += sum(part for part, _, _ in results)
    w_neg = w_removed = None
    if need_w_terms:
        w_neg = results[0][1]
        for _, other, _ in results[1:]:
            w_neg += other
        if missing is not None:
            w_removed = sum(removed for _, _, removed in results)
            w_removed = _missing.removed_total(missing, w_removed, loss)
    return PassResult(data_loss=total if need_loss else None, w_negative=w_neg, w_removed=w_removed)


def _setup(
    X, A, D, loss, map_rule, need_curvature, need_w_terms, need_loss, missing=None
) -> _PassContext:
    """The :class:`_PassContext` of one :func:`data_pass` (terms that depend on ``D`` only)."""
    ops = ArrayOps(A, D)
    xp = ops.xp
    n, k = D.shape
    col_d = column_sums(D)
    gram_d = D.T @ D if loss == "l2" else None
    # Rows D_i (x) D_i: the KL Hessian of pixel j in its maps is
    # sum_i X_ij / Y_ij^2 D_i D_i^T, i.e. (X/Y^2)_j @ outer_rows reshaped (k, k).
    outer_rows = (
        xp.reshape(D[:, :, None] * D[:, None, :], (n, k * k))
        if need_curvature and loss == "kl"
        else None
    )
    need_l2_curvature = need_curvature and loss == "l2"
    l2_curvature = float(xp.linalg.eigvalsh(gram_d)[-1]) if need_l2_curvature else None
    Dt = np.ascontiguousarray(D.T) if ops.numpy else D.T
    sparse = isinstance(X, SparseData) or (isinstance(X, ChunkedData) and X.form == "sparse")
    kl_compiled = loss == "kl" and outer_rows is None and ops.numpy and _compiled.use_compiled()
    compiled = sparse and kl_compiled
    # Dense float32 blocks stay with NumPy: its float32 logarithms are vectorised.
    fuse = kl_compiled and need_w_terms and (sparse or A.dtype == np.float64)
    fuse = fuse and (missing is None or not missing.empty_rows.any())  # (imputed rows)
    fused = getattr(map_rule, "compiled_form", None) if fuse else None
    return _PassContext(
        X=X,
        A=A,
        D=np.ascontiguousarray(D) if compiled or fused is not None else D,
        Dt=Dt,
        loss=loss,
        map_rule=map_rule,
        need_w_terms=need_w_terms,
        need_loss=need_loss,
        ops=ops,
        col_d=col_d,
        gram_d=gram_d,
        outer_rows=outer_rows,
        l2_curvature=l2_curvature,
        missing=missing,
        missing_sums=None if missing is None else _missing.pattern_sums(missing, D, loss),
        compiled=compiled,
        fused=fused,
    )


def _run_blocks(
    ctx: _PassContext, offset: int = 0
) -> list[tuple[float, np.ndarray | None, np.ndarray | None]]:
    """Split the data into blocks and run them on :func:`num_threads` threads.

    Thread ``i`` takes blocks ``i, i + threads, ...``; the results come back
    in thread order, so that their sum does not depend on scheduling. Data on
    disk (:class:`~espm_lite.kernels.chunked.ChunkedData`) are run band by
    band, ``offset`` being the first row of the band.
    """
    if isinstance(ctx.X, ChunkedData):  # data on disk: the blocks of each band in turn
        results = []
        sparse = ctx.X.form == "sparse"
        for rows, values in ctx.X.iter_bands("blocks" if sparse else "raw"):
            band = values if sparse else BandView(values, rows.start, ctx.X)
            results.extend(_run_blocks(replace(ctx, X=band), offset=rows.start))
        return results
    sparse = isinstance(ctx.X, SparseData)
    ops = ctx.ops
    if sparse:
        blocks, run = ctx.X.blocks, _sparse_blocks
    else:
        p, n = ctx.X.shape
        block_bytes = BLOCK_BYTES if ops.numpy else DEVICE_BLOCK_BYTES
        itemsize = ctx.xp.finfo(ctx.dtype).bits // 8
        blocks = [
            slice(b.start + offset, b.stop + offset)
            for b in row_blocks(p, n, itemsize, block_bytes)
        ]
        run = _dense_blocks
    run = partial(run, ctx)
    # Threads for NumPy, which releases the GIL; other libraries parallelise themselves.
    threads = min(num_threads(), len(blocks)) if ops.numpy else 1
    if threads <= 1 and not sparse:
        return [run(blocks)]
    return run_parts(run, blocks, threads)


def _l2_terms(ctx: _PassContext, Xb, Ab, nb: int):
    """Frobenius terms of one block: ``X_b D``, ``A_b D^T D``, curvature, loss part."""
    xp = ctx.xp
    negative = Xb @ ctx.D
    positive = Ab @ ctx.gram_d
    part = -ctx.ops.dot_all(Ab, negative) if ctx.need_loss else 0.0
    curvature = (
        None
        if ctx.l2_curvature is None
        else xp.full((nb,), ctx.l2_curvature, dtype=ctx.dtype, device=device(ctx.A))
    )
    return negative, positive, curvature, part


def _dense_blocks(ctx: _PassContext, my_blocks: list[slice]) -> tuple:
    """The pass over the dense row blocks ``my_blocks``.

    Returns (loss part, ``w_negative`` part, ``w_removed`` part or None).
    """
    ops, xp = ctx.ops, ctx.xp
    A, D, Dt, n, k, dtype = ctx.A, ctx.D, ctx.Dt, ctx.n, ctx.k, ctx.dtype
    kl = ctx.loss == "kl"
    rows_max = max((b.stop - b.start for b in my_blocks), default=0)
    buffers = kl and ctx.fused is None  # model and ratio of a block (none when fused)
    buf_y = ops.empty((rows_max, n), dtype) if buffers else None
    buf_r = ops.empty((rows_max, n), dtype) if buffers else None

    def buffer(buf, nb):
        return None if buf is None else buf[:nb]

    w_neg = xp.zeros((n, k), dtype=dtype, device=device(A)) if ctx.need_w_terms else None
    w_removed = None
    part = 0.0
    for rows in my_blocks:
        nb = rows.stop - rows.start
        Xb = dense_block(ctx.X, rows)
        if ctx.fused is not None:  # the whole block in one compiled loop
            lost, w_removed = _run_fused(ctx, Xb, rows, w_neg, w_removed)
            part += lost
            continue
        Ab = A[rows, :]
        R = None
        if kl:
            Y = ops.matmul(Ab, Dt, out=buffer(buf_y, nb))
            if ctx.need_loss:
                part -= ops.dot_all(Xb, ops.log(Y, out=buffer(buf_r, nb)))
            R = ops.divide(Xb, Y, out=buffer(buf_r, nb))
            negative = R @ D
            positive = xp.broadcast_to(ctx.col_d, negative.shape)
            curvature = None
            if ctx.outer_rows is not None:
                curvature = _largest_eigenvalues(ops.divide(R, Y, out=Y) @ ctx.outer_rows, k)
        else:
            negative, positive, curvature, loss_part = _l2_terms(ctx, Xb, Ab, nb)
            part += loss_part
        if ctx.missing is not None:
            negative, positive, lost = _missing.map_terms(
                ctx.missing, rows, Ab, D, ctx.loss, negative, positive, ctx.missing_sums
            )
            part += lost
        if ctx.map_rule is not None:
            A[rows, :] = ctx.map_rule(rows, negative, positive, curvature)
            Ab = A[rows, :]
            if kl and ctx.need_w_terms:
                Y = ops.matmul(Ab, Dt, out=buffer(buf_y, nb))
                R = ops.divide(Xb, Y, out=buffer(buf_r, nb))
        if ctx.need_w_terms:
            w_neg += (R.T @ Ab) if kl else (Xb.T @ Ab)
            w_removed = _removed(ctx, rows, Ab, w_removed)
    return part, w_neg, w_removed


def _sparse_blocks(ctx: _PassContext, my_blocks: list[SparseRowBlock]) -> tuple:
    """The pass over the sparse row blocks ``my_blocks`` (returns as :func:`_dense_blocks`)."""
    A, D, Dt, k = ctx.A, ctx.D, ctx.Dt, ctx.k
    kl = ctx.loss == "kl"
    outer_rows = ctx.outer_rows
    w_neg = np.zeros((ctx.n, k), dtype=ctx.dtype) if ctx.need_w_terms else None
    w_removed = None
    part = 0.0
    for block in my_blocks:
        rows = block.rows
        if ctx.fused is not None:  # the whole block in one compiled loop
            lost, w_removed = _run_fused(ctx, block, rows, w_neg, w_removed)
            part += lost
            continue
        nb = rows.stop - rows.start
        Xb = block.matrix
        Ab = A[rows]
        R = None
        if ctx.compiled:
            negative, part = _compiled_map_terms(ctx, block, Ab, part)
            positive, curvature = np.broadcast_to(ctx.col_d, negative.shape), None
        elif kl:
            values = block.values
            # The spectra at the columns of the stored entries: D does not change
            # during the pass, so they serve before and after the map update.
            d_cols = [np.take(Dt[l], block.cols) for l in range(k)]
            y = model_at(Ab, block.local_rows, d_cols)
            if ctx.need_loss:
                part -= float(np.dot(values, np.log(y)))
            ratio = np.divide(values, y, out=None if outer_rows is not None else y)
            R = csr_like(Xb, ratio)
            negative = np.asarray(R @ D)
            positive = np.broadcast_to(ctx.col_d, negative.shape)
            curvature = None
            if outer_rows is not None:
                # X / Y^2 at the stored entries, times the rows D_i (x) D_i.
                hessians = np.asarray(csr_like(Xb, np.divide(ratio, y, out=y)) @ outer_rows)
                curvature = _largest_eigenvalues(hessians, k)
        else:
            negative, positive, curvature, loss_part = _l2_terms(ctx, Xb, Ab, nb)
            negative = np.asarray(negative)
            part += loss_part
        if ctx.missing is not None:
            negative, positive, lost = _missing.map_terms(
                ctx.missing, rows, Ab, D, ctx.loss, negative, positive, ctx.missing_sums
            )
            part += lost
        if ctx.map_rule is not None:
            A[rows] = ctx.map_rule(rows, negative, positive, curvature)
            Ab = A[rows]
            if kl and ctx.need_w_terms and not ctx.compiled:
                y = model_at(Ab, block.local_rows, d_cols)
                R = csr_like(Xb, np.divide(values, y, out=y))
        if ctx.need_w_terms:
            if ctx.compiled:
                _compiled.kl_spectra_terms(block, np.ascontiguousarray(Ab), D, w_neg)
            else:
                w_neg += np.asarray((R.T @ Ab) if kl else (Xb.T @ Ab))
            w_removed = _removed(ctx, rows, Ab, w_removed)
    return part, w_neg, w_removed


def _run_fused(ctx: _PassContext, block, rows: slice, w_neg, w_removed) -> tuple:
    """One block by :func:`~espm_lite.kernels.fused.run_block`: (loss part, ``w_removed``)."""
    args = (block, rows, ctx.A, ctx.D, ctx.col_d, ctx.fused, w_neg, ctx.need_loss)
    lost = _fused.run_block(*args, missing=ctx.missing, missing_sums=ctx.missing_sums)
    return lost, _removed(ctx, rows, ctx.A[rows], w_removed)  # at the updated maps


def _compiled_map_terms(ctx: _PassContext, block: SparseRowBlock, Ab, part: float):
    """``(R_b D, part - sum x log y)`` of one CSR block, by the compiled kernel."""
    y = np.empty(block.matrix.nnz, dtype=ctx.dtype)
    negative = np.empty(Ab.shape, dtype=ctx.dtype)
    _compiled.kl_map_terms(block, np.ascontiguousarray(Ab), ctx.D, y, negative)
    if ctx.need_loss:
        part -= float(np.dot(block.values, np.log(y, out=y)))
    return negative, part


def _removed(ctx: _PassContext, rows: slice, Ab, w_removed):
    """``w_removed`` plus the block's :func:`~espm_lite.kernels.missing.spectra_removed`."""
    if ctx.missing is None:
        return None
    removed = _missing.spectra_removed(ctx.missing, rows, Ab, ctx.D, ctx.loss)
    return removed if w_removed is None else w_removed + removed


def _largest_eigenvalues(hessian_rows, k: int):
    """Largest eigenvalue of each ``(k, k)`` matrix stored as a row of ``k * k`` entries."""
    xp = array_namespace(hessian_rows)
    return xp.linalg.eigvalsh(xp.reshape(hessian_rows, (-1, k, k)))[:, -1]
