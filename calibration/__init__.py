"""Calibration: choose a deployed model's pixel and image thresholds on held-out images, estimate
how they behave on parts they were not chosen on, and write them into the model's sidecar.

    python -m calibration.calibrate --engine screw.onnx --data ../shared/data/mvtec/screw

    from calibration.calibrate import calibrate
    body = calibrate("screw.onnx", "../shared/data/mvtec/screw", image_rule="fpr=0.05", dry_run=True)

Modules: data (which images, masks, fingerprint), collect (the model through runtime.pipeline),
roc (confusion counts at every threshold), thresholds (rules, conformal bound), estimate (k-fold,
bootstrap), analyse (all numbers of one calibration), report (plots), calibrate (API and CLI;
not imported here, so that `python -m calibration.calibrate` loads it once). Torch-free: it runs
wherever runtime.inspect runs.
"""
from calibration.data import DataError, find_dataset
from calibration.thresholds import Rule, choose, measure, parse_rule

__all__ = ["DataError", "Rule", "choose", "find_dataset", "measure", "parse_rule"]
