"""Metrics, one place for evaluation, calibration and benchmarks."""
from training.metrics.localization import aupro, best_iou, localization_metrics, roc_auc

__all__ = ["aupro", "best_iou", "localization_metrics", "roc_auc"]
