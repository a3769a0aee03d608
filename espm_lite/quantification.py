r"""Element quantification of phases fitted with a labelled known matrix ``G``.

With ``X ~ G W H`` and a :class:`~espm_lite.models.LabelledG` whose element
column ``e`` sums to the element factor ``f_e`` over the channels (the
expected characteristic counts per unit atomic fraction, see
:class:`~espm_lite.models.EDXModel`), phase ``r`` attributes

.. math:: N_{er} = f_e \, W_{er} \sum_j H_{rj}

counts to element ``e``, and the atomic fraction of ``e`` in the
characteristic part of the phase is

.. math:: c_{er} = \frac{N_{er} / f_e}{\sum_i N_{ir} / f_i} = \frac{W_{er}}{\sum_i W_{ir}}.

Uncertainty (``uncertainty="counting"``, the default): the counts ``N_{ir}``
are treated as independent Poisson variables (counting statistics only: the
uncertainty of the factors ``f``, of the unmixing and of the background
separation are not included, so this is a lower bound), and to first order

.. math:: \sigma^2(c_{er}) = \sum_i \Big(\frac{\partial c_{er}}{\partial N_{ir}}\Big)^2 N_{ir}
          = \sum_i (\delta_{ei} - c_{er})^2 \frac{c_{ir}}{f_i S_r},
          \qquad S_r = \sum_i N_{ir} / f_i.

Weight fractions replace ``f_i`` by ``f_i / A_i`` (``A_i`` the atomic weight).

``uncertainty="bootstrap"`` adds the unmixing error (a bias estimate from the
purest pixels of each phase and a parametric bootstrap of the fit), see
:mod:`espm_lite.uncertainty`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .uncertainty import (
    DEFAULT_N_BOOTSTRAP,
    bootstrap_uncertainty,
    check_uncertainty_args,
    half_width,
)

if TYPE_CHECKING:
    from .estimators import NMFEstimator
    from .models import LabelledG

FRACTION_KINDS = ("atomic", "weight")


@dataclass(frozen=True)
class ConcentrationTable:
    """Element fractions of the characteristic part of each phase, with uncertainties.

    Attributes
    ----------
    elements : tuple of str
    phases : tuple of str
    values : ndarray (n_phases, n_elements)
        Fractions (each row sums to 1).
    uncertainties : ndarray (n_phases, n_elements)
        One standard deviation of the kind ``uncertainty``: counting
        statistics, or the bootstrap half-width (see :mod:`espm_lite.uncertainty`).
    counts : ndarray (n_phases, n_elements)
        Characteristic counts the fit attributes to each element in each phase.
    kind : {"atomic", "weight"}
    uncertainty : {"counting", "bootstrap"}
    counting : ndarray (n_phases, n_elements)
        One standard deviation from counting statistics alone (a lower bound).
    bias : ndarray (n_phases, n_elements) or None
        ``"bootstrap"``: estimated bias of ``values`` (the truth is estimated
        at ``values + bias``), included in ``uncertainties``.
    n_bootstrap : int or None
        ``"bootstrap"``: number of refits.
    """

    elements: tuple[str, ...]
    phases: tuple[str, ...]
    values: np.ndarray
    uncertainties: np.ndarray
    counts: np.ndarray
    kind: str
    uncertainty: str = "counting"
    counting: np.ndarray | None = None
    bias: np.ndarray | None = None
    n_bootstrap: int | None = None

    def __post_init__(self):
        if self.counting is None:
            object.__setattr__(self, "counting", self.uncertainties)

    def _title(self) -> str:
        fraction = f"{self.kind} fraction of the characteristic X-rays"
        if self.uncertainty == "counting":
            return (
                f"{fraction} (± 1 sd, counting statistics only: a lower bound, the unmixing "
                "error is not included; uncertainty='bootstrap' includes it)"
            )
        return (
            f"{fraction} (± 1 sd, bootstrap: unmixing bias + spread of "
            f"{self.n_bootstrap} Poisson refits; counting statistics alone: a lower bound)"
        )

    def __str__(self) -> str:
        bootstrap = self.uncertainty == "bootstrap"
        width = max(18, *(len(p) + 2 for p in self.phases))
        extra = 24 if bootstrap else 0
        header = "element".ljust(9) + "".join(
            p.rjust(width) + ("counting (lower bound)".rjust(extra) if bootstrap else "")
            for p in self.phases
        )
        lines = [self._title(), header]
        for e, element in enumerate(self.elements):
            cells = ""
            for r in range(len(self.phases)):
                cells += f"{self.values[r, e]:.4f} ± {self.uncertainties[r, e]:.4f}".rjust(width)
                if bootstrap:
                    cells += f"{self.counting[r, e]:.4f}".rjust(extra)
            lines.append(element.ljust(9) + cells)
        totals = "".join(f"{c:.3g}".rjust(width + extra) for c in self.counts.sum(axis=1))
        lines.append("counts".ljust(9) + totals)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def as_dict(self) -> dict[str, dict[str, tuple[float, float]]]:
        """``{phase: {element: (fraction, uncertainty)}}``."""
        return {
            phase: {
                element: (float(self.values[r, e]), float(self.uncertainties[r, e]))
                for e, element in enumerate(self.elements)
            }
            for r, phase in enumerate(self.phases)
        }


def _fractions_and_sd(counts: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractions ``c`` (rows sum to 1) and their first-order Poisson sd, per phase (row)."""
    amounts = counts / factors  # N_i / f_i
    totals = amounts.sum(axis=1, keepdims=True)
    safe = np.where(totals > 0, totals, 1.0)
    fractions = amounts / safe
    # sigma^2(c_e) = sum_i (delta_ei - c_e)^2 c_i / (f_i S)
    weights = fractions / (factors * safe)  # c_i / (f_i S), (k, E)
    n_el = counts.shape[1]
    delta = np.eye(n_el)
    var = np.einsum("rei,ri->re", (delta[None] - fractions[:, :, None]) ** 2, weights)
    return fractions, np.sqrt(np.maximum(var, 0.0))


def _labelled(G) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``(values, simplex_rows, labels)`` of a labelled ``G`` (TypeError otherwise)."""
    rows = getattr(G, "simplex_rows", None)
    labels = getattr(G, "labels", None)
    if rows is None or labels is None:
        raise TypeError(
            "G must be a labelled known matrix (espm_lite.models.LabelledG, e.g. from "
            f"EDXModel.build_G() or s.build_G()), got {type(G).__name__}."
        )
    values = np.asarray(G.values if hasattr(G, "values") else G, dtype=np.float64)
    return values, np.asarray(rows, dtype=bool), tuple(labels)


def _masses(kind: str, atomic_weights, n_elements: int) -> np.ndarray:
    """1 per element (atomic fractions) or the checked atomic weights (weight fractions)."""
    if kind == "atomic":
        return np.ones(n_elements)
    if atomic_weights is None:
        raise ValueError("kind='weight' needs atomic_weights (one per element of G).")
    weights = np.asarray(atomic_weights, dtype=np.float64)
    if weights.shape != (n_elements,) or np.any(weights <= 0):
        raise ValueError(f"atomic_weights must be {n_elements} positive values, got {weights!r}.")
    return weights


def _check_estimator(estimator, G: np.ndarray, W: np.ndarray, H: np.ndarray) -> None:
    """``uncertainty="bootstrap"`` needs the fitted estimator of ``W``, ``H`` with this ``G``."""
    if estimator is None:
        raise ValueError(
            "uncertainty='bootstrap' needs estimator: the fitted estimator of W and H "
            "(it is refitted on Poisson redraws of G W H)."
        )
    G_ = getattr(estimator, "G_", None)
    if not hasattr(estimator, "fit_transform") or not hasattr(estimator, "W_"):
        raise ValueError(f"estimator must be a fitted espm_lite estimator, got {estimator!r}.")
    if G_ is None or np.shape(G_) != G.shape or np.shape(estimator.W_) != W.shape:
        raise ValueError(
            f"estimator was not fitted with this G {G.shape} and W {W.shape} (its G_ is "
            f"{None if G_ is None else np.shape(G_)}, W_ {np.shape(estimator.W_)})."
        )
    if np.shape(estimator.H_) != H.shape:
        raise ValueError(f"estimator's H_ {np.shape(estimator.H_)} does not match H {H.shape}.")


def _checked_factors(W, H, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 copies of ``W`` and ``H`` (the caller's arrays are never touched), checked."""
    W = np.array(W, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    if W.ndim != 2 or H.ndim != 2 or W.shape[0] != G.shape[1] or H.shape[0] != W.shape[1]:
        raise ValueError(f"W {W.shape} and H {H.shape} do not match G {G.shape} (X ~ G W H).")
    if np.any(W < 0) or np.any(H < 0):
        raise ValueError(
            "W and H must be non-negative: element fractions are not defined for a signed "
            "fit (e.g. SNMF, whose W is signed). Quantify a non-negative fit."
        )
    return W, H


def _phase_names(phase_names, k: int) -> tuple[str, ...]:
    names = tuple(phase_names) if phase_names is not None else tuple(f"phase {r}" for r in range(k))
    if len(names) != k:
        raise ValueError(f"phase_names must have {k} names, got {len(names)}.")
    return names


def concentration_table(
    W: ArrayLike,
    H: ArrayLike,
    G: LabelledG,
    *,
    kind: str = "atomic",
    atomic_weights: ArrayLike | None = None,
    phase_names: Sequence[str] | None = None,
    uncertainty: str = "counting",
    estimator: NMFEstimator | None = None,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    random_state: int | np.random.Generator | None = None,
    progress: bool = True,
) -> ConcentrationTable:
    """Element fractions per phase from a fit ``X ~ G W H`` with a labelled ``G``.

    Parameters
    ----------
    W : ndarray (m, k)
        Fitted ``W`` (in counts: the maps ``H`` carry the intensity).
    H : ndarray (k, p)
        Fitted maps.
    G : LabelledG
        The known matrix of the fit (element columns sum to their factors).
    kind : {"atomic", "weight"}, default="atomic"
        Atomic fractions, or weight fractions (needs ``atomic_weights``).
    atomic_weights : ndarray (n_elements,), optional
        Atomic weights of ``G.element_labels`` in that order.
    phase_names : sequence of str, optional
        Default ``"phase 0"``, ``"phase 1"``, ...
    uncertainty : {"counting", "bootstrap"}, default="counting"
        ``"counting"``: counting statistics only, instant, a lower bound.
        ``"bootstrap"``: adds the unmixing error (bias from the purest pixels
        of each phase plus the spread of ``n_bootstrap`` Poisson refits, see
        :mod:`espm_lite.uncertainty`); costs ``n_bootstrap`` refits.
    estimator : NMFEstimator, optional
        The fitted estimator of ``W`` and ``H`` (needed by ``"bootstrap"``;
        cloned, never modified).
    n_bootstrap : int, default=20
        Number of refits (``"bootstrap"``), at least 2.
    random_state : None, int or numpy Generator
        Seed of the Poisson redraws (same seed, same table).
    progress : bool, default=True
        Show a tqdm progress bar over the refits.

    Returns
    -------
    ConcentrationTable
        Its ``counting`` field always holds the counting-statistics sd.

    Raises
    ------
    ValueError
        A bad argument (named), shapes that do not match, a signed fit, or
        ``"bootstrap"`` without the fitted estimator of this ``W``, ``H``, ``G``.
    """
    if kind not in FRACTION_KINDS:
        raise ValueError(f"kind must be one of {FRACTION_KINDS}, got {kind!r}.")
    check_uncertainty_args(uncertainty, n_bootstrap, random_state, progress)
    values, rows, labels = _labelled(G)
    W, H = _checked_factors(W, H, values)
    names = _phase_names(phase_names, W.shape[1])
    factors = values.sum(axis=0)[rows]  # f_e: element column sums
    elements = tuple(label for label, keep in zip(labels, rows, strict=True) if keep)
    counts = (factors[:, None] * W[rows] * H.sum(axis=1)[None, :]).T  # N_er, (k, E)
    masses = _masses(kind, atomic_weights, len(elements))
    fractions, sd = _fractions_and_sd(counts, factors / masses)
    if uncertainty == "counting":
        return ConcentrationTable(elements, names, fractions, sd, counts, kind)
    _check_estimator(estimator, values, W, H)
    options = {"n_bootstrap": n_bootstrap, "random_state": random_state, "progress": progress}
    bias, spread = bootstrap_uncertainty(estimator, W, H, values, rows, masses, **options)
    U = half_width(bias, spread, sd, fractions)
    return ConcentrationTable(
        elements, names, fractions, U, counts, kind, "bootstrap", sd, bias, n_bootstrap
    )


def _check_phases(phases, k: int) -> list[int]:
    """``phases`` as a list of distinct phase indices in ``0 .. k - 1`` (all when None)."""
    if phases is None:
        return list(range(k))
    if isinstance(phases, (int, np.integer)) and not isinstance(phases, bool):
        phases = [phases]
    try:
        chosen = list(phases)
    except TypeError:
        raise ValueError(
            f"phases must be a sequence of phase indices in 0..{k - 1}, got {phases!r}."
        ) from None
    bad = [
        p
        for p in chosen
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)) or not 0 <= p < k
    ]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"phases must be distinct phase indices in 0..{k - 1} (the fit has {k} phases), "
            f"got {phases!r}."
        )
    return [int(p) for p in chosen]


def plot_element_contributions(
    W: ArrayLike,
    H: ArrayLike,
    G: LabelledG,
    energy: ArrayLike,
    *,
    phases: Sequence[int] | None = None,
    axes=None,
):
    """Each phase spectrum with its element and background contributions stacked.

    Parameters
    ----------
    W, H, G
        As in :func:`concentration_table`.
    energy : ndarray (n,)
        Channel energies (keV).
    phases : sequence of int, optional
        Phases to show (default all), one panel each; each in ``0 .. k - 1``.
    axes : sequence of matplotlib Axes, optional
        One per phase shown.

    Returns
    -------
    matplotlib Figure

    Raises
    ------
    ValueError
        ``phases`` not distinct indices in ``0 .. k - 1``, or ``axes`` not one per phase.
    """
    import matplotlib.pyplot as plt

    values = np.asarray(G.values if hasattr(G, "values") else G, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    intensity = np.asarray(H, dtype=np.float64).sum(axis=1)
    phases = _check_phases(phases, W.shape[1])
    if axes is not None and len(axes) != len(phases):
        raise ValueError(
            f"axes must hold one Axes per phase shown ({len(phases)}), got {len(axes)}."
        )
    if axes is None:
        fig, axes = plt.subplots(len(phases), 1, figsize=(8, 2.6 * len(phases)), squeeze=False)
        axes = axes[:, 0]
    else:
        fig = axes[0].figure
    labels = list(G.labels)
    # a distinct colour per element or family column (tab10 repeats after 10, and a
    # background would look like an element), shades of grey for the bremsstrahlung
    background = [label.startswith("bremsstrahlung") for label in labels]
    n_background = sum(background)
    palette = plt.get_cmap("tab20" if len(labels) - n_background > 10 else "tab10").colors
    line_index = np.cumsum([not b for b in background]) - 1
    grey_index = np.cumsum(background) - 1
    colours = [
        str(0.45 + 0.4 * g / max(n_background, 1)) if b else palette[i % len(palette)]
        for b, i, g in zip(background, line_index, grey_index, strict=True)
    ]
    for ax, r in zip(axes, phases, strict=True):
        parts = values * (W[:, r] * intensity[r])[None, :]  # (n, m) counts per column
        ax.stackplot(energy, parts.T, labels=labels, colors=colours, alpha=0.8)
        ax.plot(energy, parts.sum(axis=1), color="k", lw=0.6, label="phase spectrum")
        ax.set_title(f"phase {r}")
        ax.set_ylabel("counts")
    axes[-1].set_xlabel("energy (keV)")
    axes[0].legend(ncol=4, fontsize="small", loc="upper right")
    fig.tight_layout()
    return fig
