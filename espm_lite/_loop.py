r"""The one iteration loop of every espm_lite estimator.

:func:`run` repeats ``solver.step(problem, state)`` and owns what every fit
shares: the stopping rule, the revert on an increase of the objective, the
history of the objective terms, the progress bar and the monitor callback.

Contract of a step: ``solver.step`` turns the iterate ``Z_{t-1}`` into
``Z_t`` in place and returns the objective terms (``{"data": ..., penalty:
...}``) of ``Z_{t-1}``, computed during the same pass over the data. The
objective of an iterate is therefore known one iteration later, and two
snapshots of the (small) factors are kept so that an increase can be undone.

Stopping rule: with ``(D_t, M_t)`` the spectra and maps of iterate ``t``
(``solver.monitored``, what the estimator returns), the relative change of
the factors is

.. math:: \delta_t = \max\left(\frac{\|D_t - D_{t-1}\|_F}{\|D_t\|_F},
          \frac{\|M_t - M_{t-1}\|_F}{\|M_t\|_F}\right),

and the loop stops when :math:`\delta < \mathrm{tol}` at
:data:`STOP_WINDOW` consecutive iterations, or when the net change over
:data:`STOP_WINDOW` iterations is below ``tol``: every :data:`STOP_WINDOW`
accepted iterations the iterate is compared with the one kept at the
previous check, and the loop stops when their relative change (the same
``delta``) is below ``tol``.  The second test stops iterates that cycle on
the spot, each step a little above ``tol``, one way and back (the
extrapolation's restarts, the Laplacian and the simplex projection: on a
real 64x64 STEM map ``delta`` stayed at 4.7e-7 for 9000 iterations while
the fractions changed by less than 1e-6).  It never stops a steady drift
that the first test would not: it needs a drift below ``tol / STOP_WINDOW``
per iteration.  ``delta`` is scale-free
(unchanged when the data and the iterates are multiplied by a constant, and
independent of the size of the objective, which for Poisson data is
dominated by the noise floor) and it measures the quantity of interest: the
spectra and maps the estimator returns (a relative change ``delta`` of a
spectrum turns it by at most ``arcsin(delta)``). The objective's relative
change ``|F_{t-1} - F_t| / |F_t|`` (espm's rule, and the one used
before) is still recorded as ``rel_change``; ``delta`` as ``factor_change``.

Between steps the iterate is extrapolated (:mod:`espm_lite._extrapolation`)
when the solver supports it; an extrapolated point whose objective is above
the iterate before it is refused (that iterate is restored and the
extrapolation weight shrinks), so the objective never rises.

The fit also stops when the objective increases after a plain step (``F_t >
F_{t-1} (1 + 10^{-12})``: the previous iterate is restored and the fit stops,
unless the solver's ``on_increase`` asks to go on, e.g. after halving a step),
or after ``max_iter`` iterations (then a ``ConvergenceWarning``).

The choice of the rule and of the defaults is measured in
``benchmarks/bench_stopping.py`` (see ``docs/maths.md``, "Stopping rule").
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from ._extrapolation import Extrapolation

logger = logging.getLogger(__name__)

#: Relative increase of the objective tolerated as rounding.
INCREASE_RTOL = 1e-12

#: Consecutive iterations with a relative factor change below ``tol`` before stopping.
STOP_WINDOW = 50

Monitor = Callable[..., dict]


@dataclass
class History:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One row per accepted iterate: ``full_loss``, the data term, the
        penalties (all per data entry), ``rel_change`` (relative change of the
        objective), ``factor_change`` (relative change of the factors, the
        stopping measure) and the monitor's values.
    n_iter : int
        Iterations run.
    final_terms : dict
        Objective terms (totals) of the final iterate.
    converged : bool
        The stopping rule was met (or the objective stopped decreasing).
    calm : int
        Consecutive iterations (up to now) with ``factor_change < tol``.
    checkpoint : tuple of ndarray or None
        The factors kept for the net-change test, and ``since_checkpoint`` the
        accepted iterations since they were kept.
    interrupted : bool
        The loop was stopped by ``KeyboardInterrupt`` (Ctrl-C) and ended on the
        last complete iterate.
    """

    rows: list = field(default_factory=list)
    n_iter: int = 0
    final_terms: dict = field(default_factory=dict)
    converged: bool = False
    calm: int = 0
    checkpoint: tuple | None = None
    since_checkpoint: int = 0
    interrupted: bool = False

    def replace_final(self, terms: dict, n_entries: int, names: tuple[str, ...]) -> None:
        """The final iterate changed after the loop (a solver's polish): record it.

        ``terms`` becomes ``final_terms``, and the objective fields of the last
        row (the final iterate) show it; the change fields stay those of the loop.
        """
        self.final_terms = terms
        if self.rows:
            self.rows[-1]["full_loss"] = sum(terms.values()) / n_entries
            self.rows[-1][names[0]] = terms["data"] / n_entries
            for name in names[1:]:
                self.rows[-1][name] = terms.get(name, 0.0) / n_entries

    def report_units(self, solver, problem) -> None:
        """The rows (per data entry) converted in place to the units of the raw data."""
        names = solver.names
        for row in self.rows:
            terms = {"data": row[names[0]], **{name: row[name] for name in names[1:]}}
            terms = solver.report(problem, terms, problem.n_entries)
            row[names[0]] = terms.pop("data")
            row.update(terms)
            row["full_loss"] = row[names[0]] + sum(terms.values())

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


def _extrapolation_refused(extrapolation, f: float, f_older: float | None) -> bool:
    """Whether the iterate of objective ``f`` was extrapolated and rose above ``f_older``
    (or overflowed).

    Checked even with ``no_stop``: extrapolation never makes a fit non-monotone.
    """
    refused = (
        extrapolation is not None
        and extrapolation.applied
        and f_older is not None
        and not f <= f_older * (1 + INCREASE_RTOL)  # NaN or infinite refused too
    )
    if refused:
        extrapolation.refused()
    return refused


def _relative_change(f_older: float, f: float) -> float:
    return abs(f_older - f) / max(abs(f), np.finfo(np.float64).tiny)


def _factors(solver, problem, state) -> tuple[np.ndarray, ...]:
    """Copies of the spectra and maps of the iterate (float64)."""
    return tuple(np.array(a, dtype=np.float64) for a in solver.monitored(problem, state))


def factor_change(older: tuple[np.ndarray, ...], newer: tuple[np.ndarray, ...]) -> float:
    """``max_i ||newer_i - older_i||_F / ||newer_i||_F``: the stopping measure."""
    tiny = np.finfo(np.float64).tiny
    return max(
        float(np.linalg.norm(b - a)) / max(float(np.linalg.norm(b)), tiny)
        for a, b in zip(older, newer, strict=True)
    )


def _settled_on_net(history: History, newest: tuple[np.ndarray, ...], tol: float) -> bool:
    """The net-change test (module docstring): every :data:`STOP_WINDOW` accepted
    iterations, whether the factors moved less than ``tol`` since the last check;
    the newest factors become the next checkpoint."""
    if history.checkpoint is None:
        history.checkpoint, history.since_checkpoint = newest, 0
        return False
    history.since_checkpoint += 1
    if history.since_checkpoint < STOP_WINDOW:
        return False
    net = factor_change(history.checkpoint, newest)
    history.checkpoint, history.since_checkpoint = newest, 0
    return net < tol


def run(
    solver,
    problem,
    state,
    *,
    tol: float,
    max_iter: int,
    no_stop: bool = False,
    extrapolate: bool = True,
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
        A :class:`espm_lite.solvers.Solver` (``step``, ``objective``, ``on_increase``, ``names``).
    problem : Problem
    state
        Has ``snapshot()``, ``restore(snapshot)`` and ``finite()``.
    tol, max_iter, no_stop
        Stopping rule: stop when the relative change of the factors is below
        ``tol`` at :data:`STOP_WINDOW` consecutive iterations (``no_stop``:
        exactly ``max_iter`` iterations).
    extrapolate : bool
        Extrapolate between steps (:mod:`espm_lite._extrapolation`).
    monitor : callable, optional
        ``monitor(problem, solver, state) -> dict`` of extra history values
        (e.g. angles to the true spectra), evaluated at every iterate.  The
        solver also has ``monitored(problem, state) -> (spectra, maps)``, the
        factors of the stopping rule.
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
    extrapolation = Extrapolation() if extrapolate and solver.extrapolated(problem) else None

    factors = [_factors(solver, problem, state)]  # of the newest iterate

    def measure(change: float = np.nan) -> dict:
        out = {"factor_change": change}
        if monitor is not None:
            out.update(monitor(problem, solver, state))
        return out

    history = History()
    snaps = [(state.snapshot(), measure())]
    bar = tqdm(total=max_iter, disable=not verbose, desc=name, leave=False)
    fit = (solver, problem, state, settings, history, snaps, measure, factors)
    try:
        f_older, terms_older, stopped = _iterate(*fit, bar, debug, extrapolation)
    except KeyboardInterrupt:  # Ctrl-C: end on the last complete iterate
        state.restore(snaps[-1][0])
        history.interrupted = True
        f_older = terms_older = None
        stopped = False
    finally:
        bar.close()
    if extrapolation is not None and not stopped:
        extrapolation.undo(solver, problem, state)  # end on an update, not a guess
    _finish(solver, problem, state, settings, history, snaps, f_older, terms_older, stopped)
    return history


def _iterate(
    solver, problem, state, settings, history, snaps, measure, factors, bar, debug, extrapolation
):
    """The iterations; returns ``(F of the last iterate, its terms, stopped on increase)``."""
    f_older = terms_older = None  # objective of Z_{t-2}
    for it in range(1, settings.max_iter + 1):
        terms = solver.step(problem, state)
        history.n_iter = it
        if debug and not state.finite():
            raise FloatingPointError(f"Non-finite factor at iteration {it}.")
        bar.update(1)
        f = sum(terms.values())  # F(Z_{it-1})
        if _extrapolation_refused(extrapolation, f, f_older):
            # The extrapolated point raised the objective: back to the iterate before it.
            state.restore(snaps[-2][0])
            snaps[:] = [snaps[-2]]
            f_older = terms_older = None
            factors[0] = _factors(solver, problem, state)
            continue
        if not np.isfinite(f):
            raise FloatingPointError(
                f"{settings.name}: the objective is not finite at iteration {it - 1} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}): the data or the "
                "parameters overflow the computation (very large counts or regularisation "
                "strengths); rescale them."
            )
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
                factors[0] = _factors(solver, problem, state)
                history.calm = 0
                continue
            return f_older, terms_older, True
        if f_older is not None:
            rel = _relative_change(f_older, f)
            history.rows.append(_row(settings, terms, rel, snaps[-1][1]))
            if it % settings.eval_print == 0:
                bar.set_postfix(loss=f"{f / settings.n_entries:.6g}")
                logger.debug(
                    "%s iteration %d: objective %.10g",
                    settings.name,
                    it - 1,
                    f / settings.n_entries,
                )
        f_older, terms_older = f, terms
        if extrapolation is not None:
            if history.rows:
                extrapolation.accepted()
            extrapolation.after_step(solver, problem, state)
        newest = _factors(solver, problem, state)  # of Z_it
        change = factor_change(factors[0], newest)
        factors[0] = newest
        history.calm = history.calm + 1 if change < settings.tol else 0
        settled = history.calm >= STOP_WINDOW or _settled_on_net(history, newest, settings.tol)
        history.converged = settled and not settings.no_stop
        snaps[:] = [snaps[-1], (state.snapshot(), measure(change))]
        if history.converged:
            break
    return f_older, terms_older, False


def _finish(solver, problem, state, settings, history, snaps, f_older, terms_older, stopped):
    """The objective of the last iterate (reverting it if it increased) and the warning."""
    history.checkpoint = None  # factors of the net-change test: not kept after the fit
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
    if history.interrupted:
        warnings.warn(
            f"{settings.name} was interrupted after iteration {history.n_iter}: the fit ends "
            "on that iterate, before the stopping rule was met.",
            ConvergenceWarning,
            stacklevel=4,
        )
    elif not (history.converged or settings.no_stop):
        warnings.warn(
            f"{settings.name} reached max_iter={settings.max_iter} before the relative "
            f"change of the factors stayed below tol={settings.tol} for {STOP_WINDOW} "
            "iterations (or moved less than tol over them); increase max_iter.",
            ConvergenceWarning,
            stacklevel=4,
        )
