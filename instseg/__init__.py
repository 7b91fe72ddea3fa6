"""instseg: shared code for the five instance-segmentation methods (data, engine, evaluation, ops loader)."""

__version__ = "0.1.0"
