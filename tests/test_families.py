"""families/: the table of model families, discovered from their folders, and what every layer
takes from it (config -> family, the runtime's backends, the CLI choices)."""
from __future__ import annotations

import pytest

from families import FAMILIES, family_of
from families.family import Family


def test_every_family_folder_declares_itself() -> None:
    assert {"vae", "template"} <= set(FAMILIES)
    for name, family in FAMILIES.items():
        assert isinstance(family, Family) and family.name == name and family.summary
        assert callable(family.builder())
        assert family.estimate({"model": {"size": 128}, "train": {"epochs": 2}}, 100) >= 0


def test_a_config_names_its_family_or_an_arch_that_implies_one() -> None:
    assert family_of({"model": {"family": "template"}}).name == "template"
    assert family_of({"model": {"arch": "template", "size": 64}}).name == "template"
    assert family_of({"model": {"arch": "resnet18"}}).name == "vae"
    assert family_of({}).name == "vae"        # training's default arch
    with pytest.raises(ValueError, match="model.family: 'gan' is not one of"):
        family_of({"model": {"family": "gan"}})
    with pytest.raises(ValueError, match="model.arch: 'vit' is not one of"):
        family_of({"model": {"arch": "vit"}})


def test_the_vae_family_knows_every_arch_training_builds() -> None:
    from training.models.factory import ARCHS

    assert set(FAMILIES["vae"].archs) == set(ARCHS)


def test_the_runtime_opens_what_the_families_declare() -> None:
    from runtime.backends import BACKENDS, EXTENSIONS

    assert EXTENSIONS[".npz"] == "template" and "template" in BACKENDS
    for family in FAMILIES.values():
        for ext, (name, _) in family.backends.items():
            assert EXTENSIONS[ext] == name and name in BACKENDS


def test_every_shipped_config_builds_a_family() -> None:
    from pathlib import Path

    from families.discriminative.train import settings
    from training.config import load_config

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        config = load_config(path)
        family = family_of(config)
        assert family.name in FAMILIES, path
        if family.name == "discriminative":
            settings(config)          # the values can train
