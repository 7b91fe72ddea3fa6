"""CASNet (semantic + common-attribute + box-probability heads, IoU-vote clustering) as a detectron2 extension.

``casnet.layers`` (the IoU-vote clustering op) needs only torch.
"""
from . import layers  # noqa: F401
