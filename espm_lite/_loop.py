r"""The one iteration loop of every espm_lite estimator.

:func:`run` repeats ``solver.step(problem, state)`` and owns what every fit
shares: the stopping rule, the revert on an increase of the objective, the
history of the objective terms, the progress bar and the monitor callback.

Contract of a step: ``solver.step`` turns the iterate ``Z_{t-1}`` into
``Z_t`` in place and returns the objective terms (``{"data": ..., penalty:
...}``) of ``Z_{t-1}``, computed during the same pass over the data. The
objective of an iterate is therefore known one iteration later, and two
snapshots of the (small) factors are kept so that an increase can be undone.

Stopping rule: the loop stops when

.. math:: |F_{t-1} - F_t| \,/\, |F_t| < \mathrm{tol},

or when the objective increases (``F_t > F_{t-1} (1 + 10^{-12})``: the
previous iterate is restored and the fit stops, unless the solver's
``on_increase`` asks to go on, e.g. after halving a step), or after
``max_iter`` iterations (then a ``ConvergenceWarning``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: Relative increase of the objective tolerated as rounding.
INCREASE_RTOL = 1e-12

Monitor = Callable[..., dict]


@dataclass
class History:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One row per accepted iterate: ``full_loss``, the data term, the
        penalties (all per data entry), ``rel_change`` and the monitor's values.
    n_iter : int
        Iterations run.
    final_terms : dict
        Objective terms (totals) of the final iterate.
    converged : bool
        The stopping rule was met (or the objective stopped decreasing).
    """

    rows: list = field(default_factory=list)
    n_iter: int = 0
    final_terms: dict = field(default_factory=dict)
    converged: bool = False

    def as_array(self, names: tuple[str, ...]) -> np.ndarray:
        """The rows as a structured array with the fields ``names`` first."""
        names = list(names)
        if self.rows:
            names += [key for key in self.rows[0] if key not in names]
        out = np.zeros(len(self.rows), dtype=[(name, np.float64) for name in names])
        for i, row in enumerate(self.rows):
            for name in names:
                out[name][i] = row.get(name, np.nan)
        return out


@dataclass
class _Settings:
    tol: float
    max_iter: int
    no_stop: bool
    n_entries: int
    name: str
    eval_print: int
    names: tuple[str, ...]  # data-term name, then the penalty names


def _row(settings: _Settings, terms: dict, rel: float, measures: dict) -> dict[str, float]:
    n = settings.n_entries
    row = {"full_loss": sum(terms.values()) / n, settings.names[0]: terms["data"] / n}
    for name in settings.names[1:]:
        row[name] = terms.get(name, 0.0) / n
    row["rel_change"] = rel
    row.update(measures)
    return row


def _increased(settings: _Settings, f: float, f_older: float | None) -> bool:
    return f_older is not None and f > f_older * (1 + INCREASE_RTOL) and not settings.no_stop


def _relative_change(f_older: float, f: float) -> float:
    return abs(f_older - f) / max(abs(f), np.finfo(np.float64).tiny)


def run(
    solver,
    problem,
    state,
    *,
    tol: float,
    max_iter: int,
    no_stop: bool = False,
    monitor: Monitor | None = None,
    verbose: int = 1,
    eval_print: int = 10,
    debug: bool = False,
    name: str = "",
) -> History:
    """Iterate ``solver.step`` until the stopping rule; the state ends at the best iterate.

    Parameters
    ----------
    solver
        Has ``step(problem, state) -> terms``, ``objective(problem, state) ->
        terms``, ``on_increase(state) -> bool``, ``names`` (history field of
        the data term, then the penalty names).
    problem : Problem
    state
        Has ``snapshot()``, ``restore(snapshot)`` and ``finite()``.
    tol, max_iter, no_stop
        Stopping rule (``no_stop``: exactly ``max_iter`` iterations).
    monitor : callable, optional
        ``monitor(problem, solver, state) -> dict`` of extra history values
        (e.g. angles to the true spectra), evaluated at every iterate.
    verbose : int
        0 hides the tqdm progress bar.
    eval_print : int
        Period of the objective shown in the bar and logged at DEBUG level.
    debug : bool
        Check every iterate for non-finite values (``FloatingPointError``).
    name : str
        Estimator name for the bar, logs and warnings.
    """
    settings = _Settings(
        tol, max_iter, no_stop, problem.n_entries, name, eval_print, tuple(solver.names)
    )

    def measure() -> dict:
        return {} if monitor is None else monitor(problem, solver, state)

    history = History()
    snaps = [(state.snapshot(), measure())]
    bar = tqdm(total=max_iter, disable=not verbose, desc=name, leave=False)
    try:
        f_older, terms_older, stopped = _iterate(
            solver, problem, state, settings, history, snaps, measure, bar, debug
        )
    finally:
        bar.close()
    _finish(solver, problem, state, settings, history, snaps, f_older, terms_older, stopped)
    return history


def _iterate(solver, problem, state, settings, history, snaps, measure, bar, debug):
    """The iterations; returns ``(F of the last iterate, its terms, stopped on increase)``."""
    f_older = terms_older = None  # objective of Z_{t-2}
    for it in range(1, settings.max_iter + 1):
        terms = solver.step(problem, state)
        history.n_iter = it
        if debug and not state.finite():
            raise FloatingPointError(f"Non-finite factor at iteration {it}.")
        bar.update(1)
        f = sum(terms.values())  # F(Z_{it-1})
        if _increased(settings, f, f_older):
            logger.info(
                "%s: objective increased at iteration %d (%.10g -> %.10g); "
                "reverting to the previous iterate.",
                settings.name,
                it - 1,
                f_older / settings.n_entries,
                f / settings.n_entries,
            )
            state.restore(snaps[-2][0])
            if solver.on_increase(state):
                snaps[:] = [snaps[-2]]
                f_older = terms_older = None
                continue
            return f_older, terms_older, True
        if f_older is not None:
            rel = _relative_change(f_older, f)
            history.rows.append(_row(settings, terms, rel, snaps[-1][1]))
            history.converged = rel < settings.tol and not settings.no_stop
            if it % settings.eval_print == 0:
                bar.set_postfix(loss=f"{f / settings.n_entries:.6g}")
                logger.debug(
                    "%s iteration %d: objective %.10g",
                    settings.name,
                    it - 1,
                    f / settings.n_entries,
                )
        f_older, terms_older = f, terms
        snaps[:] = [snaps[-1], (state.snapshot(), measure())]
        if history.converged:
            break
    return f_older, terms_older, False


def _finish(solver, problem, state, settings, history, snaps, f_older, terms_older, stopped):
    """The objective of the last iterate (reverting it if it increased) and the warning."""
    if stopped:
        history.final_terms = terms_older
        history.converged = True
    else:
        final = solver.objective(problem, state)
        f = sum(final.values())
        if _increased(settings, f, f_older):
            state.restore(snaps[-2][0])
            history.final_terms = terms_older
        else:
            rel = np.nan if f_older is None else _relative_change(f_older, f)
            history.rows.append(_row(settings, final, rel, snaps[-1][1]))
            history.final_terms = final
            history.converged = history.converged or rel < settings.tol
    if not (history.converged or settings.no_stop):
        warnings.warn(
            f"{settings.name} reached max_iter={settings.max_iter} before the relative "
            f"objective change fell below tol={settings.tol}; increase max_iter.",
            ConvergenceWarning,
            stacklevel=4,
        )
