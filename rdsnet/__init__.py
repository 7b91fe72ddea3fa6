"""RDSNet (object stream + pixel stream, correlation + cropping) as a detectron2 extension.

``rdsnet.layers`` (the correlation + cropping op) needs only torch.
"""
from . import layers  # noqa: F401
