"""The structure the code promises: one fitting path, explicit parameters, small modules."""

import ast
import inspect
import pathlib

import pytest

import espm_lite
from espm_lite import PNMF, SNMF, ConvexNMF, NMFEstimator, SmoothNMF

ESTIMATORS = [SmoothNMF, PNMF, SNMF, ConvexNMF]

#: Base parameters a subclass leaves out on purpose (fixed class attributes, see its docstring).
NOT_PARAMETERS = {
    SNMF: {"l2", "simplex_H", "simplex_W", "fixed_W", "fixed_H", "sparse"},
    ConvexNMF: {"l2", "simplex_H", "simplex_W", "fixed_W", "fixed_H", "sparse", "G"},
}


def _parameters(cls):
    return inspect.signature(cls.__init__).parameters


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_subclass_signature_lists_the_base_parameters(cls):
    base = set(_parameters(NMFEstimator)) - {"self"}
    missing = base - set(_parameters(cls)) - NOT_PARAMETERS.get(cls, set())
    assert not missing, f"{cls.__name__} lacks base parameters {sorted(missing)}"
    for name in NOT_PARAMETERS.get(cls, ()):
        assert name not in _parameters(cls) and hasattr(cls, name)


@pytest.mark.parametrize("cls", [NMFEstimator, *ESTIMATORS])
def test_only_n_components_is_positional(cls):
    params = list(_parameters(cls).values())[1:]
    assert params[0].name == "n_components"
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    if cls is not NMFEstimator:
        with pytest.raises(TypeError, match="positional"):
            cls(3, None)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_every_estimator_takes_the_one_fitting_path(cls):
    assert cls.fit_transform is NMFEstimator.fit_transform
    assert cls.fit is NMFEstimator.fit
    assert "_set_fitted" not in vars(cls)


def _sizes():
    root = pathlib.Path(espm_lite.__file__).parent
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        yield path.relative_to(root), source.count("\n"), ast.parse(source)


def test_modules_and_functions_stay_small():
    too_long = []
    for name, n_lines, tree in _sizes():
        if n_lines > 500:
            too_long.append(f"{name}: {n_lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    assert espm_lite.__version__ == version("espm_lite")
