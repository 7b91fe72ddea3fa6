"""Evaluation helpers shared by the methods (detectron2's evaluators, fixed where they need it)."""
