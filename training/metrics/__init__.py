"""Metrics, one place for evaluation, calibration and benchmarks."""
from training.metrics.factorvae import FactorVAEScore, factor_vae_metric
from training.metrics.localization import aupro, best_iou, localization_metrics, roc_auc

__all__ = ["FactorVAEScore", "aupro", "best_iou", "factor_vae_metric", "localization_metrics", "roc_auc"]
