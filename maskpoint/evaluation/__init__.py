"""Mask Point R-CNN's evaluator: Table VII's AP_keypoint on contour points sampled from the ground-truth masks."""

from .contour_keypoints import ContourKeypointEvaluator, contour_keypoint_evaluators

__all__ = ["ContourKeypointEvaluator", "contour_keypoint_evaluators"]
