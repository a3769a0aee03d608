r"""Data left on disk: a dask array read band by band at every pass (exact out-of-core fits).

When a dask array fits the memory budget neither compressed nor dense
(:mod:`espm_lite._lazy`), the fit reads it at every pass instead:
:class:`ChunkedData` wraps it in the internal pixels-x-channels layout, split
into *bands* (rows of chunks, each with all the channels), and

* :func:`~espm_lite.kernels.data_pass` runs its usual blocks inside each band
  in turn, the next band being read (by the active dask scheduler: threads,
  processes or a ``dask.distributed`` cluster) while the current one is used;
  low-count data (the density of :func:`~espm_lite.kernels.choose_path`) are
  compressed to CSR as each band is read
  (:func:`~espm_lite.kernels.compiled.compress_rows`) and take the sparse path;
* the final exact row solve (:func:`~espm_lite.kernels.rows.coefficient_rows`)
  solves each band's pixels in turn;
* the start (NNDSVD) takes scikit-learn's randomized SVD computed band by
  band (:meth:`ChunkedData.randomized_svd`), and the constants of the data term,
  the data scale and the checks of the values (finite, non-negative) come from
  one first pass (:meth:`ChunkedData.summary`).

Only the factors, a few bands (:data:`READ_AHEAD` ahead, as stored or
compressed) and the per-block temporaries are in memory.  The
iterates are those of the in-memory path (dense, or sparse) up to the order of
the sums (blocks do not cross band borders), so the fits agree to rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import linalg
from sklearn.utils.extmath import svd_flip
from tqdm.auto import tqdm

from .compiled import compress_rows


def check_values(values: np.ndarray, where: str, check_sign: bool) -> None:
    """``ValueError`` naming ``where`` for a band of a dask array with NaN, infinity or
    (``check_sign``) negative values."""
    if not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinity (dask array).")
    if check_sign and (values < 0).any():
        raise ValueError(
            f"Negative values in data passed to {where}: counts must be non-negative (dask array)."
        )


def chunk_tasks(array) -> list:
    """One dask task per row of chunks of the 2-D dask ``array`` (whole rows of channels).

    Computing a task hands over the chunk as read, where ``array.blocks[i].compute()``
    (or a block passed to a task) copies it once more, in dask's finalisation of an
    array: reading a 1 GB file chunk by chunk took 0.55 s that way, 0.30 s with the
    tasks. The chunks must only be read, never written (one may be a view of the
    caller's array).
    """
    return list(array.to_delayed().ravel())


#: Bands read ahead, each in its thread, when they are compressed as they are read.
READ_AHEAD = 2


@dataclass(frozen=True)
class ChunkSummary:
    """What the first pass over the data gives (raw values, before any scale)."""

    pixel_sums: np.ndarray  # (p,) sum of |x| over the channels of each pixel
    total: float  # sum x
    xlogx: float  # sum x log x (0 log 0 = 0)
    squares: float  # sum x^2
    nonzero: int


class ChunkedData:
    """A dask array ``(p, n)``, pixels as rows, divided by ``scale`` as it is read.

    Parameters
    ----------
    array : dask.array.Array (p, n)
        Rechunked to whole rows if its chunks split the channels.
    dtype : numpy dtype
        Floating type of the values handed to the passes.
    n_features : int
        Columns of the data in the caller's orientation (``n_features_in_``).
    where : str
        Named in the errors of the value checks.
    check_sign : bool
        Refuse negative values (count models).
    verbose : int
        Progress bar over the chunks of the first pass.
    """

    def __init__(
        self, array, dtype, *, n_features: int, where: str, check_sign: bool = True, verbose=0
    ):
        if array.numblocks[1] > 1:
            array = array.rechunk({1: -1})
        self.array = array
        self.dtype = np.dtype(dtype)
        self.n_features = int(n_features)
        self.where = where
        self.check_sign = check_sign
        self.verbose = verbose
        self.scale = 1.0
        self.form = "dense"  # or "sparse": bands compressed to CSR as they are read
        offsets = np.cumsum((0, *array.chunks[0]))
        self.bands = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        self.chunk_tasks = chunk_tasks(array)
        self._cache: dict = {}  # shared with the divided copies: the summary of the raw values

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.array.shape)

    def divided(self, scale: float) -> ChunkedData:
        """The same data divided by ``scale`` (read from the same array; no pass)."""
        out = ChunkedData.__new__(ChunkedData)
        out.__dict__.update(self.__dict__)
        out.scale = self.scale * float(scale)
        return out

    def with_path(self, path: str) -> ChunkedData:
        """The same data, read for the ``"sparse"`` or ``"dense"`` path of the passes."""
        out = self.divided(1.0)
        out.form = path
        return out

    def density(self) -> float:
        """Fraction of non-zero entries (from :meth:`summary`)."""
        p, n = self.shape
        return self.summary().nonzero / max(1, p * n)

    # ---------------------------------------------------------------- reads
    def band(self, i: int, form: str = "dense"):
        """Band ``i`` (its rows, all channels) in memory.

        ``form``: ``"raw"``, the values as stored (for example ``uint16``
        counts); ``"sparse"``, compressed to CSR of :attr:`dtype` and divided
        like the in-memory sparse data; ``"blocks"``, that CSR matrix split
        into the row blocks of the sparse path
        (:class:`~espm_lite.kernels.SparseData`, rows of the whole data);
        ``"dense"``, an array of :attr:`dtype` divided like the in-memory dense
        data (:meth:`as_values`).
        """
        raw = np.asarray(self.chunk_tasks[i].compute())
        if form == "raw":
            return raw
        if form in ("sparse", "blocks"):
            # In this (reading) thread: the data-pass threads are busy with the last band.
            matrix = compress_rows(raw, self.dtype, shared=False)
            if self.scale != 1.0:  # as the in-memory sparse data are divided
                matrix.data *= self.dtype.type(1.0 / self.scale)
            if form == "blocks":
                from .sparse_data import SparseData  # which imports this module

                return SparseData(matrix, row_offset=self.bands[i].start)
            return matrix
        return self.as_values(raw)

    def as_values(self, raw: np.ndarray) -> np.ndarray:
        """Raw values (a band or part of one) as a new array of :attr:`dtype`, divided."""
        values = np.array(raw, dtype=self.dtype)  # never a view
        if self.scale != 1.0:
            values /= self.dtype.type(self.scale)
        return values

    def iter_bands(self, form: str = "dense") -> Iterator[tuple[slice, np.ndarray]]:
        """``(rows, values)`` of every band in order (see :meth:`band` for ``form``).

        The next band is read meanwhile, in a reading thread that also
        compresses it (``"sparse"``, ``"blocks"``: :data:`READ_AHEAD` bands,
        in as many threads, so that one is compressed while the next is read);
        dense values are made from the raw band when it is handed over, so that
        the bands in flight hold the raw size.
        """
        read = partial(self.band, form="raw" if form == "dense" else form)
        ahead = READ_AHEAD if form in ("sparse", "blocks") else 1
        with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="espm_lite_read") as reader:
            pending = [reader.submit(read, i) for i in range(min(ahead, len(self.bands)))]
            for i, rows in enumerate(self.bands):
                values = pending.pop(0).result()
                if i + ahead < len(self.bands):
                    pending.append(reader.submit(read, i + ahead))
                yield rows, self.as_values(values) if form == "dense" else values

    def summary(self) -> ChunkSummary:
        """One pass over the raw values: checks and sums (cached)."""
        if "summary" not in self._cache:
            raw = self.divided(1.0)
            raw.scale = 1.0  # raw.iter_bands(): the values cast, not divided
            sums, total, xlogx, squares, nonzero = [], 0.0, 0.0, 0.0, 0
            bands = tqdm(
                raw.iter_bands(),
                total=len(self.bands),
                desc="espm_lite: first pass over the chunks",
                disable=not self.verbose,
                leave=False,
            )
            for _, values in bands:
                check_values(values, self.where, self.check_sign)
                sums.append(np.abs(values).sum(axis=1, dtype=np.float64))
                positive = values[values > 0].astype(np.float64)
                total += float(values.sum(dtype=np.float64))
                xlogx += float(np.dot(positive, np.log(positive)))
                squares += float(np.vdot(values, values))
                nonzero += int(np.count_nonzero(values))
            summary = ChunkSummary(np.concatenate(sums), total, xlogx, squares, nonzero)
            self._cache["summary"] = summary
        return self._cache["summary"]

    # ------------------------------------------------- what the fit asks of it
    def data_scale(self) -> float:
        """Mean over pixels of the summed absolute values (1 when all zero)."""
        sums = self.summary().pixel_sums
        if not np.isfinite(sums).all():
            raise ValueError(
                "X is too large: the sum over the channels of a pixel overflows float64, so "
                "the maps cannot be represented; divide X by a constant first."
            )
        mean = float(sums.mean()) if sums.size else 0.0
        return mean if mean > 0 else 1.0

    def any(self) -> bool:
        return self.summary().nonzero > 0

    def constants(self, loss: str) -> tuple[float, float]:
        """:func:`~espm_lite.kernels.data_constants` of the divided data, from :meth:`summary`."""
        s, summary = self.scale, self.summary()
        if loss == "l2":
            return summary.squares / (s * s), 0.0
        total = summary.total / s
        return summary.xlogx / s - np.log(s) * total, total

    def sum(self, dtype=np.float64) -> float:
        return self.summary().total / self.scale

    def randomized_svd(self, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(U, S, Vt)`` of rank ``k``: scikit-learn's ``randomized_svd`` with its
        defaults, computed band by band.

        The same algorithm (Halko, Martinsson & Tropp, 2011): a Gaussian test
        matrix drawn from ``RandomState(seed)``, 10 oversamples, 7 power
        iterations (4 when ``k`` is 10 % of the smaller side or more) normalised
        by LU, a final QR, the SVD of the projection, signs flipped alike, and
        the transposed problem when there are fewer pixels than channels; so
        the start, and the fit, are those of the same data in memory to
        rounding. Each product with the data is one pass (``2 n_iter + 2`` in
        all), holding two bands and ``(p + n) (k + 10)`` numbers. (dask's
        ``svd_compressed`` keeps every chunk in memory between the stages that
        reuse it.)
        """
        p, n = self.shape
        transpose = p < n  # scikit-learn's "auto": factor the wider side's transpose
        times, times_transposed = (
            (self._transpose_times, self._times)
            if transpose
            else (self._times, self._transpose_times)
        )
        n_iter = 7 if k < 0.1 * min(p, n) else 4
        Q = np.random.RandomState(seed).normal(size=(p if transpose else n, k + 10))
        lu = partial(linalg.lu, permute_l=True, check_finite=False)
        for _ in range(n_iter):
            Q = lu(times(Q))[0]
            Q = lu(times_transposed(Q))[0]
        Q = linalg.qr(times(Q), mode="economic", check_finite=False)[0]
        U, S, Vt = linalg.svd(times_transposed(Q).T, full_matrices=False)
        U, Vt = svd_flip(Q @ U, Vt, u_based_decision=not transpose)
        if transpose:
            return Vt[:k].T, S[:k], U[:, :k].T
        return U[:, :k], S[:k], Vt[:k]

    def _times(self, M: np.ndarray) -> np.ndarray:
        """``X @ M`` (p, l), one pass."""
        return np.concatenate(
            [np.asarray(values @ M) for _, values in self.iter_bands(self.form)], axis=0
        )

    def _transpose_times(self, M: np.ndarray) -> np.ndarray:
        """``X^T @ M`` (n, l), one pass (``M`` has a row per pixel)."""
        out = np.zeros((self.shape[1], M.shape[1]))
        for rows, values in self.iter_bands(self.form):
            out += values.T @ M[rows]
        return out


@dataclass(frozen=True)
class BandView:
    """The raw values of one band and the first row they start at (for :func:`dense_block`,
    which casts and divides each block of rows as :meth:`ChunkedData.as_values`)."""

    values: np.ndarray
    start: int
    data: ChunkedData

    def rows(self, rows: slice) -> np.ndarray:
        """Rows ``rows`` (of the whole data) as an array of the fit's type, divided."""
        return self.data.as_values(self.values[rows.start - self.start : rows.stop - self.start])

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape
