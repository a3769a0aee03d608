r"""One-dimensional maximisations of the PNMF variational updates.

With a Gaussian posterior ``N(mu, sigma^2)`` of a log-abundance and a
Gaussian prior ``N(m, s^2)``, each coordinate step of the ELBO is a concave
1-D problem: the mean has a closed form through the Wright omega function,
the standard deviation a safeguarded Newton iteration.
"""

from __future__ import annotations

import numpy as np
from scipy.special import wrightomega

#: Largest posterior standard deviation of a latent log-abundance (keeps ``exp(F)`` finite).
SIGMA_MAX = float(np.sqrt(50.0))


def kl_normal(mu, var, prior_mean, prior_var) -> float:
    r"""``sum_il KL(N(mu_il, var_il) || N(m_l, s_l^2))``."""
    return 0.5 * float(
        np.sum(np.log(prior_var / var) + (var + (mu - prior_mean) ** 2) / prior_var - 1.0)
    )


def update_mean(S, b, mu, prior_mean, prior_var):
    r"""Maximiser of ``S mu - b e^mu - (mu - m)^2 / (2 s^2)`` entry by entry.

    Setting the derivative to zero, ``u = m + s^2 S - mu`` solves
    ``u + log u = log(s^2 b) + m + s^2 S``: ``u`` is the Wright omega function
    of the right-hand side (exact, no overflow).  ``b > 0``; entries where the
    new value does not increase the objective (rounding) keep ``mu``.
    """
    aS = prior_var * S
    z = np.log(prior_var * b) + prior_mean + aS
    new = prior_mean + aS - wrightomega(z).real
    with np.errstate(over="ignore"):
        gain = S * (new - mu) - b * (np.exp(new) - np.exp(mu))
    gain -= ((new - prior_mean) ** 2 - (mu - prior_mean) ** 2) / (2 * prior_var)
    return np.where(np.isfinite(new) & (gain >= 0), new, mu)


def update_std(T, b, sigma, prior_var, max_iter: int = 60):
    r"""Maximiser over ``sigma > 0`` of ``T sigma - b e^{sigma^2/2} - sigma^2/(2 s^2) + log sigma``.

    The function is concave; its derivative
    ``k(sigma) = 1/sigma + T - sigma (b e^{sigma^2/2} + 1/s^2)`` decreases from
    ``+inf`` to ``-inf``.  Newton steps safeguarded by the bracket
    ``[lo, hi]`` (``hi`` ignores ``b``, ``lo`` bounds ``b e^{sigma^2/2}`` at
    ``hi``), capped at :data:`SIGMA_MAX`, warm-started at ``sigma``.  ``T = 0``
    for the Jensen bound (then this is the ``sigma^2`` update).
    """
    hi = 0.5 * (T * prior_var + np.sqrt((T * prior_var) ** 2 + 4 * prior_var))
    hi = np.minimum(hi, SIGMA_MAX)
    M = b * np.exp(0.5 * hi * hi) + 1.0 / prior_var
    lo = (T + np.sqrt(T * T + 4 * M)) / (2 * M)
    lo = np.minimum(lo, hi)
    x = np.clip(sigma, lo, hi)
    for _ in range(max_iter):
        e = b * np.exp(0.5 * x * x)
        k = 1.0 / x + T - x * (e + 1.0 / prior_var)
        lo = np.where(k > 0, x, lo)
        hi = np.where(k < 0, x, hi)
        dk = -1.0 / (x * x) - e * (1.0 + x * x) - 1.0 / prior_var
        new = x - k / dk
        # Bisect where the Newton step leaves the bracket (or is not finite).
        outside = ~((new >= lo) & (new <= hi))
        new = np.where(outside, 0.5 * (lo + hi), new)
        done = np.max(np.abs(new - x) / x) <= 1e-10
        x = new
        if done:
            break

    def objective(s):
        return T * s - b * np.exp(0.5 * s * s) - s * s / (2 * prior_var) + np.log(s)

    return np.where(objective(x) >= objective(sigma), x, sigma)
