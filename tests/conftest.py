import os
import warnings

import matplotlib
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

matplotlib.use("Agg")

#: Under pytest-xdist (``-n auto``) the workers share the cores: each keeps its share of
#: BLAS threads, so that BLAS threads spinning in one worker do not starve the others.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_BLAS_LIMIT = (
    threadpool_limits(limits=max(1, (os.cpu_count() or 1) // _WORKERS), user_api="blas")
    if _WORKERS > 1
    else None
)


@pytest.fixture(scope="session")
def phantom_500():
    """80x80 pixels, 3 phases, ~500 counts/pixel (the acceptance phantom, fewer channels)."""
    from espm_lite.datasets import make_spectrum_image

    return make_spectrum_image(
        shape_2d=(80, 80), n_channels=400, n_phases=3, counts_per_pixel=500, seed=3
    )


@pytest.fixture(scope="session")
def phantom_20():
    """80x80 pixels, 3 phases, ~20 counts/pixel: noisy maps that smoothing should help."""
    from espm_lite.datasets import make_spectrum_image

    return make_spectrum_image(
        shape_2d=(80, 80), n_channels=400, n_phases=3, counts_per_pixel=20, seed=3
    )


@pytest.fixture(scope="session")
def low_counts():
    """Low-count Poisson data (n, p) = (60, 48), a (6, 8) scan, 3 phases, about 15 % non-zero."""
    from espm_lite.datasets import make_spectrum_image

    data = make_spectrum_image(
        shape_2d=(6, 8), n_channels=60, n_phases=3, counts_per_pixel=12, seed=3
    )
    assert 0.05 < np.count_nonzero(data.X) / data.X.size < 0.5
    return data.X


@pytest.fixture
def small_problem():
    """A small random Poisson problem, (n, p) = (30, 48) with a (6, 8) scan."""
    rng = np.random.default_rng(0)
    D = rng.random((30, 3)) ** 3
    H = rng.dirichlet(np.ones(3), size=48).T
    return rng.poisson(50 * D @ H).astype(np.float64)


@pytest.fixture
def quiet_convergence():
    """Ignore ConvergenceWarning in a test (use with ``pytest.mark.usefixtures``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield
