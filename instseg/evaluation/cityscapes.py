"""detectron2's Cityscapes instance evaluator, kept from writing into the current directory.

cityscapesscripts' instance evaluation always writes ``matches.json`` into the working directory. This
subclass runs the evaluation inside the evaluator's own temporary folder (with the ground-truth folder made
absolute first), so nothing lands in the user's checkout and concurrent evaluations do not collide.
"""

import contextlib
import os

from detectron2.evaluation import CityscapesInstanceEvaluator as _D2CityscapesInstanceEvaluator
from detectron2.utils.file_io import PathManager

from instseg.compat import ensure_cityscapesscripts_alias


class _AbsoluteGtDir:
    """A read-only view of a dataset's Metadata whose ``gt_dir`` is an absolute local path."""

    def __init__(self, metadata):
        self._metadata = metadata

    def __getattr__(self, name):
        value = getattr(self._metadata, name)
        if name == "gt_dir":
            value = os.path.abspath(PathManager.get_local_path(value))
        return value


class CityscapesInstanceEvaluator(_D2CityscapesInstanceEvaluator):
    def __init__(self, dataset_name):
        ensure_cityscapesscripts_alias()
        super().__init__(dataset_name)
        self._metadata = _AbsoluteGtDir(self._metadata)

    def evaluate(self):
        if not getattr(self, "_temp_dir", None) or not os.path.isdir(self._temp_dir):
            return super().evaluate()
        with contextlib.chdir(self._temp_dir):
            return super().evaluate()
