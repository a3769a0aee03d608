r"""Incremental Newton updates of the spectra over batches of pixels (``partial_fit``).

``SmoothNMF.partial_fit`` sees the pixels a batch at a time and never again
unless the caller passes them again. It keeps the spectra ``W`` ``(p, k)``
(channels by phases) and, for every batch ``b`` it has seen, a quadratic
model of that batch's KL data term as a function of ``W``:

1. the maps of the batch's pixels are solved exactly with ``W`` fixed
   (:func:`espm_lite.kernels.rows.coefficient_rows`, projected Newton), as
   ``transform`` does;
2. with those maps ``A_b`` fixed, the data term separates over the channels
   ``c``, and its second-order Taylor expansion at the current spectrum row
   ``w_c`` has gradient and Hessian

   .. math:: g_c = \sum_{j \in b} a_j (1 - x_{jc} / y_{jc}), \qquad
             Q_c = \sum_{j \in b} \frac{x_{jc}}{y_{jc}^2} a_j a_j^T,
             \qquad y_{jc} = a_j^T w_c;

3. the new spectra minimise the sum of the models of all the batches seen,
   ``1/2 w^T (sum Q) w + (sum q)^T w`` with ``q = g - Q w_b`` (``w_b`` the
   spectra where the model was made), channel by channel, subject to
   ``w >= floor`` (:func:`nonnegative_quadratic`).

A batch passed again (the same values) replaces its old model, so passes over
the same data give each pixel one weight, as in incremental Newton methods
for finite sums (Rodomanov and Kropotov, ICML 2016); new batches are added.
Each call repeats steps 1-3 ``rounds`` times on its batch. The first call
starts from a batch fit of the first batch.

This is an approximation of the batch fit: the models of the other batches
were made at older spectra. On a 40x40x300 phantom at 50 counts/pixel in 16
batches the spectra are within about 10-40 degrees of the batch fit after one
pass and within 2 degrees after about a dozen from four of five starts (from the
fifth they settle 2.2 degrees away; ``tests/test_partial_fit.py``). On the real
map ``tests/data/test_TEM.bcf`` (6 counts/pixel) they settle 36-64 degrees away, at
a KL 0.8 % above the batch fit's (``docs/maths.md`` section 11).
The scale of ``W`` is free (the maps follow it); the estimator reports
columns that sum to one when ``simplex_W`` holds.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..kernels.newton_rows import outer_rows
from ..kernels.rows import coefficient_rows
from ..kernels.sparse_data import canonical_csr

#: Models of at most this many distinct batches are kept apart (replaceable);
#: older ones are folded into a fixed sum.
MAX_BATCH_MODELS = 256

#: Projected Newton steps of each channel's quadratic problem, at most.
QP_MAX_STEPS = 50


def batch_key(X) -> bytes:
    """A digest of a batch's values (dense, or canonical CSR): the same batch, the same key."""
    digest = hashlib.blake2b(digest_size=16)
    parts = (X.indptr, X.indices, X.data) if sp.issparse(X) else (np.ascontiguousarray(X),)
    digest.update(repr(X.shape).encode())
    for part in parts:
        digest.update(np.ascontiguousarray(part).view(np.uint8))
    return digest.digest()


def channel_models(X, maps: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hessians ``Q`` ``(p, k, k)`` and linear terms ``q`` ``(p, k)`` of one batch.

    The model of channel ``c`` is ``1/2 w^T Q_c w + q_c^T w`` (up to a
    constant), the Taylor expansion of the batch's KL data term at ``W``
    with the batch's maps ``maps`` ``(b, k)`` fixed. Only the stored entries of
    a sparse ``X`` (CSR) are visited.
    """
    p, k = W.shape
    if sp.issparse(X):
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        y = np.einsum("ij,ij->i", maps[rows], W[X.indices])
        ratio = sp.csr_matrix((X.data / y, X.indices, X.indptr), shape=X.shape)
        weight = sp.csr_matrix((X.data / (y * y), X.indices, X.indptr), shape=X.shape)
        ratio_maps = np.asarray(ratio.T @ maps)
        Q = np.asarray(weight.T @ outer_rows(maps))
    else:
        Y = maps @ W.T
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(X > 0, X / Y, 0.0)
        ratio_maps = ratio.T @ maps
        Q = (ratio / Y).T @ outer_rows(maps)
    Q = Q.reshape(p, k, k)
    g = maps.sum(axis=0)[None, :] - ratio_maps
    return Q, g - np.einsum("ckl,cl->ck", Q, W)


def nonnegative_quadratic(Q: np.ndarray, q: np.ndarray, start: np.ndarray, floor: float):
    """``argmin 1/2 w^T Q_c w + q_c^T w`` over ``w >= floor``, for every channel ``c``.

    Bertsekas' projected Newton on each ``k``-dimensional problem, all
    channels at once: Newton steps on the coefficients that are free (above
    the floor, or with a negative gradient), diagonally scaled gradient steps
    on the others, the step halved until the objective does not increase. A
    tiny ridge keeps the systems regular; channels without counts (``Q_c = 0``,
    ``q_c > 0``) go to the floor.
    """
    p, k = q.shape
    trace = np.einsum("ckk->c", Q)
    ridge = np.where(trace > 0, 1e-12 * trace, 1.0)  # no counts: q > 0 puts w on the floor
    Qr = Q + ridge[:, None, None] * np.eye(k)
    eye = np.eye(k, dtype=bool)
    w = np.maximum(start, floor)

    def value(w):
        return 0.5 * np.einsum("ck,ckl,cl->c", w, Qr, w) + np.einsum("ck,ck->c", q, w)

    f = value(w)
    active = np.ones(p, dtype=bool)
    for _ in range(QP_MAX_STEPS):
        g = np.einsum("ckl,cl->ck", Qr, w) + q
        free = (w > floor * (1 + 1e-9)) | (g < 0)
        both = free[:, :, None] & free[:, None, :]
        system = np.where(both, Qr, 0.0) + np.where(~free[:, :, None] & eye, 1.0, 0.0)
        diag = np.einsum("ckk->ck", Qr)
        newton = np.linalg.solve(system, np.where(free, -g, 0.0)[..., None])[..., 0]
        with np.errstate(over="ignore"):  # a huge step is projected on the floor
            d = np.where(free, newton, -g / diag)
        t = np.ones(p)
        new = w.copy()
        pending = active.copy()
        for _ in range(30):
            trial = np.maximum(w + t[:, None] * d, floor)
            f_trial = value(trial)
            ok = pending & (f_trial <= f + 1e-14 * np.abs(f))
            new[ok], f[ok] = trial[ok], f_trial[ok]
            pending &= ~ok
            if not pending.any():
                break
            t[pending] *= 0.5
        change = np.abs(new - w).max(axis=1) / np.maximum(np.abs(new).max(axis=1), floor)
        w = new
        active &= change > 1e-12
        if not active.any():
            break
    return w


@dataclass
class BatchModels:
    """The spectra and the quadratic models of the batches seen (see the module)."""

    W: np.ndarray
    floor: float
    models: OrderedDict = field(default_factory=OrderedDict)
    folded: tuple[np.ndarray, np.ndarray] | None = None

    def _sum(self, leave_out: bytes | None) -> tuple[np.ndarray, np.ndarray]:
        p, k = self.W.shape
        Q, q = (np.zeros((p, k, k)), np.zeros((p, k))) if self.folded is None else self.folded
        Q, q = Q.copy(), q.copy()
        for key, (Qb, qb) in self.models.items():
            if key != leave_out:
                Q += Qb
                q += qb
        return Q, q

    def update(self, X, rounds: int) -> None:
        """``rounds`` model-and-step updates of the spectra on batch ``X`` (rows = pixels)."""
        X = canonical_csr(X) if sp.issparse(X) else X
        key = batch_key(X)
        others_Q, others_q = self._sum(leave_out=key)
        for _ in range(rounds):
            maps = coefficient_rows(X, self.W, floor=self.floor).astype(np.float64)
            Qb, qb = channel_models(X, maps, self.W)
            self.W = nonnegative_quadratic(others_Q + Qb, others_q + qb, self.W, self.floor)
        self.models[key] = (Qb, qb)
        self.models.move_to_end(key)
        if len(self.models) > MAX_BATCH_MODELS:
            _, (Qo, qo) = self.models.popitem(last=False)
            if self.folded is not None:
                Qo, qo = self.folded[0] + Qo, self.folded[1] + qo
            self.folded = (Qo, qo)
