"""Solvers: the maths of each model, one module per model.

A solver is built by its estimator from the parameters and the
:class:`~espm_lite._problem.Problem` and offers ``start(problem)``,
``step(problem, state)``, ``objective(problem, state)`` and ``result(...)``
(see :class:`~espm_lite.solvers._base.Solver`); :func:`espm_lite._loop.run`
iterates it.

* :mod:`.smooth_kl` — SmoothNMF: KL NMF with Laplacian, log sparsity, simplex;
* :mod:`.frobenius` — SNMF (semi-NMF) and ConvexNMF (least squares);
* :mod:`.pnmf` — PNMF: Poisson NMF by variational inference.
"""

from ._base import ArrayState, FitState, Result, Solver
from .frobenius import ConvexSolver, SemiNMF
from .pnmf import VariationalPoisson
from .smooth_kl import SmoothKL

__all__ = [
    "ArrayState",
    "ConvexSolver",
    "FitState",
    "Result",
    "SemiNMF",
    "SmoothKL",
    "Solver",
    "VariationalPoisson",
]
