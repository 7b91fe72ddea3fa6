"""DESIGN.md's layers: instseg/ knows no method, method packages do not import each other, and the method packages
are listed once (packaging) and found through the registry."""

import ast
import os
import re

import pytest

from instseg.registry import method_packages
from tests.utils import requires_detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _shipped():
    # setup.py's METHOD_PACKAGES, read as text: the one list (the installed entry points come from it)
    text = open(os.path.join(ROOT, "setup.py")).read()
    return ast.literal_eval(re.search(r"^METHOD_PACKAGES = (\[.*?\])", text, re.M).group(1))


METHODS = _shipped()


def _imported_top_packages(path):
    """The top-level package of every import in a Python file (relative imports excluded)."""
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "find_spec",
            "__import__",
        ):  # importlib.import_module("dsg"), find_spec("maskpoint"), ...
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.add(arg.value.split(".")[0])
    return out


def _python_files(package):
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def test_installed_entry_points_are_the_shipped_packages():
    assert method_packages() == sorted(METHODS)


def test_instseg_imports_no_method_package():
    bad = {os.path.relpath(f, ROOT): sorted(_imported_top_packages(f) & set(METHODS)) for f in _python_files("instseg")}
    assert not {f: p for f, p in bad.items() if p}


@pytest.mark.parametrize("method", METHODS)
def test_method_package_imports_no_other_method(method):
    others = set(METHODS) - {method}
    bad = {os.path.relpath(f, ROOT): sorted(_imported_top_packages(f) & others) for f in _python_files(method)}
    assert not {f: p for f, p in bad.items() if p}


def test_the_method_list_is_only_in_packaging():
    """No module of the bottom or middle layer spells out the list of methods (a sequence of two or more of their
    names); setup.py is the one place."""
    names = "|".join(METHODS)
    pattern = re.compile(rf"""["']({names})["']\s*,\s*["']({names})["']""")
    offenders = [
        os.path.relpath(f, ROOT)
        for pkg in ["instseg", *METHODS]
        for f in _python_files(pkg)
        if pattern.search(open(f).read())
    ]
    assert not offenders


@requires_detectron2
def test_importing_a_method_registers_its_config_function():
    from instseg.config import get_cfg
    from instseg.registry import METHOD_CONFIG_REGISTRY, load_methods

    assert load_methods() == tuple(sorted(METHODS))
    assert {f"add_{m}_config" for m in METHODS} <= {name for name, _ in METHOD_CONFIG_REGISTRY}
    cfg = get_cfg()
    for node in ("MASK_POINT", "MASKPLUS", "DSG", "RDSNET", "CASNET"):
        assert node in cfg.MODEL


@pytest.mark.parametrize("method", METHODS)
def test_every_method_package_has_the_same_anatomy(method):
    """<method>/{__init__.py, config.py with add_<method>_config, layers/}; layers/ imports no detectron2 (CI without
    detectron2 tests it); the detectron2 import guard is in the package's __init__.py only."""
    root = os.path.join(ROOT, method)
    for f in ("__init__.py", os.path.join("layers", "__init__.py"), "config.py"):
        assert os.path.isfile(os.path.join(root, f)), f
    assert f"def add_{method}_config(" in open(os.path.join(root, "config.py")).read()
    for f in _python_files(method):
        rel = os.path.relpath(f, root)
        if rel.startswith("layers" + os.sep):
            assert "detectron2" not in _imported_top_packages(f), rel
        if rel != "__init__.py":
            assert 'find_spec("detectron2")' not in open(f).read(), rel
