"""Deeply Shape-guided instance segmentation (DSG) as a detectron2 extension.

``dsg.layers`` (the Shape-guided RoIAlign op) needs only torch; the detectron2 parts are imported when
detectron2 is installed.
"""
from . import layers  # noqa: F401
