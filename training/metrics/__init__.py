"""The disentanglement metric (FactorVAE's, paper 4.3). The localization and detection metrics
are torch-free and shared with calibration on the edge: core.metrics."""
from training.metrics.factorvae import FactorVAEScore, factor_vae_metric

__all__ = ["FactorVAEScore", "factor_vae_metric"]
