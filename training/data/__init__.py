"""Datasets: MVTec-layout folders, plain image folders, MNIST idx.gz, UCSD Ped frame folders.

Every loader returns a `Split` of uint8 arrays already at the model's size (decoded once: screw
PNGs are 1024x1024 and decoding them every epoch would dominate training time on a CPU), prepared
by core.prepare as every other layer prepares them (registration included when the model has it).
"""
from training.data.load import load_split, registration_of
from training.data.split import AugmentedImages, Split

__all__ = ["Split", "AugmentedImages", "load_split", "registration_of"]
