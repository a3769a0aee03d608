"""Smooth abundance maps of synthetic phases (columns on the simplex)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .._validation import check_shape_2d, positive_int

MAP_KINDS = ("discs", "gradients")


def _grid_shape(ny: int, nx: int, n_cells: int) -> tuple[int, int]:
    """A grid ``(gy, gx)`` of at least ``n_cells`` cells (capped at the pixel count).

    Cells hold at least one pixel each and are as square as possible.
    """
    n_cells = min(n_cells, ny * nx)
    best, best_score = (ny, nx), np.inf
    for gy in range(1, min(ny, n_cells) + 1):
        gx = -(-n_cells // gy)
        if gx > nx:
            continue
        score = abs(np.log((ny / gy) / (nx / gx))) + 0.3 * (gy * gx - n_cells) / n_cells
        if score < best_score:
            best, best_score = (gy, gx), score
    return best


def _cell_pixel(lo: float, hi: float, target: float) -> int:
    """The pixel index ``i`` with ``lo <= i < hi`` that is nearest to ``target``."""
    first, last = int(np.ceil(lo)), int(np.ceil(hi)) - 1
    return int(np.clip(np.rint(target), first, max(first, last)))


def _disc_weights(ny: int, nx: int, n_phases: int, rng: np.random.Generator) -> np.ndarray:
    """Unnormalised ``(k, ny, nx)`` weights: a matrix phase 0 and soft-edged discs.

    The scan is split into a grid of at least ``k`` cells; each of the phases
    ``1 .. k-1`` gets a disc in a cell of its own, at least one cell is left to
    the matrix, and the other cells may hold a second disc of a random phase.
    Disc centres sit on pixels, so every phase is nearly pure somewhere
    whenever the scan has at least ``k`` pixels.
    """
    gy, gx = _grid_shape(ny, nx, n_phases)
    cell_h, cell_w = ny / gy, nx / gx
    cell = min(cell_h, cell_w)
    order = rng.permutation(gy * gx)
    owners = [(r, int(order[(r - 1) % order.size])) for r in range(1, n_phases)]
    for c in order[n_phases - 1 : -1]:  # the last cell stays matrix only
        if rng.random() < 0.5:
            owners.append((int(rng.integers(1, n_phases)), int(c)))
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    fields = np.zeros((n_phases, ny, nx))
    for r, c in owners:
        iy, ix = divmod(c, gx)
        rel_radius = rng.uniform(0.38, 0.45)
        jitter = max(0.0, 0.5 - rel_radius - 0.05) * cell
        cy = (iy + 0.5) * cell_h - 0.5 + rng.uniform(-jitter, jitter)
        cx = (ix + 0.5) * cell_w - 0.5 + rng.uniform(-jitter, jitter)
        cy = _cell_pixel(iy * cell_h - 0.5, (iy + 1) * cell_h - 0.5, cy)
        cx = _cell_pixel(ix * cell_w - 0.5, (ix + 1) * cell_w - 0.5, cx)
        radius = rel_radius * cell
        dist = np.hypot(yy - cy, xx - cx)
        # logistic edge, ~radius/7 wide: smooth in space, nearly 1 at the centre
        fields[r] = np.maximum(fields[r], expit((radius - dist) / (0.15 * radius)))
    # The matrix fades inside the discs, so disc centres are (nearly) pure.
    fields[0] = np.clip(1.0 - fields[1:].max(axis=0), 0.0, None) + 1e-3
    return fields


def make_maps(
    shape_2d: tuple[int, int], n_phases: int, kind: str, rng: np.random.Generator
) -> np.ndarray:
    """Smooth abundance maps ``(k, p)`` whose columns sum to 1.

    Parameters
    ----------
    shape_2d : (int, int)
        ``(ny, nx)``; ``p = ny * nx`` pixels, row-major.
    n_phases : int
        Number of phases ``k``.
    kind : {"discs", "gradients"}
        ``"discs"``: phase 0 is a matrix and every other phase sits in
        soft-edged discs, nearly pure (abundance > 0.8) at their centres; the
        matrix is nearly pure in at least one region too (every phase
        dominates somewhere as long as ``p >= k``).
        ``"gradients"``: smooth ramps and waves, normalised per pixel.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray (k, p)
    """
    ny, nx = check_shape_2d(shape_2d)
    n_phases = positive_int("n_phases", n_phases)
    if kind not in MAP_KINDS:
        raise ValueError(f"map_kind must be one of {MAP_KINDS}, got {kind!r}.")
    if n_phases == 1:
        return np.ones((1, ny * nx))
    if kind == "discs":
        weights = _disc_weights(ny, nx, n_phases, rng)
    else:
        yy, xx = np.meshgrid(np.linspace(0, 1, ny), np.linspace(0, 1, nx), indexing="ij")
        weights = np.empty((n_phases, ny, nx))
        for r in range(n_phases):
            angle = rng.uniform(0, np.pi)
            freq = rng.uniform(0.5, 1.5)
            phase = rng.uniform(0, 2 * np.pi)
            ramp = np.cos(angle) * xx + np.sin(angle) * yy
            weights[r] = 1.0 + np.cos(2 * np.pi * freq * ramp + phase)
        weights = weights**2 + 0.02
    maps = weights.reshape(n_phases, -1)
    return maps / maps.sum(axis=0, keepdims=True)
