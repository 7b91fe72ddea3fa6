"""Compatibility shims for the detectron2 we install from its official source."""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

# detectron2's main branch (since Dec 2024, facebookresearch/detectron2#5436) imports cityscapesscripts by a
# Meta-internal module path, so its Cityscapes loader and evaluators fail with "No module named 'deeplearning'".
_D2_CITYSCAPESSCRIPTS = "deeplearning.projects.cityscapesApi.cityscapesscripts"


class _CityscapesScriptsAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves that path: its parents as empty packages, the modules under it as the public
    ``cityscapesscripts`` modules themselves (no second copy, so module attributes stay consistent)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == _D2_CITYSCAPESSCRIPTS or fullname.startswith(_D2_CITYSCAPESSCRIPTS + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if _D2_CITYSCAPESSCRIPTS.startswith(fullname + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        if spec.name == _D2_CITYSCAPESSCRIPTS or spec.name.startswith(_D2_CITYSCAPESSCRIPTS + "."):
            module = importlib.import_module("cityscapesscripts" + spec.name[len(_D2_CITYSCAPESSCRIPTS) :])
            spec.loader_state = module.__spec__  # the import system overwrites __spec__: restored below
            return module
        return None  # an empty parent package

    def exec_module(self, module):
        if module.__spec__.loader_state is not None:
            module.__spec__ = module.__spec__.loader_state


def ensure_cityscapesscripts_alias() -> bool:
    """Make detectron2's internal ``cityscapesscripts`` path resolve to the public package (idempotent).

    Returns False when ``cityscapesscripts`` is missing (detectron2 then fails on the import itself). The
    finder lives in ``sys.meta_path``, so it reaches the loader's worker processes when they are forked."""
    if any(isinstance(f, _CityscapesScriptsAlias) for f in sys.meta_path):
        return True
    if importlib.util.find_spec("cityscapesscripts") is None:
        return False
    if importlib.util.find_spec(_D2_CITYSCAPESSCRIPTS.split(".")[0]) is None:
        sys.meta_path.insert(0, _CityscapesScriptsAlias())  # before PathFinder, which would load copies
    return True
