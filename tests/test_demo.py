"""runtime.demo: the README's main job runs end to end (train -> export -> parity -> inspect)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from tests.conftest import tiny_config
from runtime.demo import main

REPO = Path(__file__).resolve().parents[1]


def test_demo_end_to_end(mvtec_dir: Path, tmp_path: Path, capsys):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(mvtec_dir)))
    out = tmp_path / "demo"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for step in ("train", "export", "parity", "inspect"):
        assert f"== {step} done" in printed
    rows = list(csv.DictReader((out / "inspect" / "report.csv").open()))
    assert len(rows) == 6 and all(r["processing"] == "done" for r in rows)  # 3 good + 3 defective test images
    summary = json.loads((out / "inspect" / "summary.json").read_text())
    assert summary["counts"]["inspected"] == 6 and summary["status"] == "complete"
    assert len(list((out / "inspect" / "overlay").rglob("*.jpg"))) == 6
    assert (out / "deploy" / "screw.yaml").exists()


def test_demo_errors(tmp_path: Path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "no-data")))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no-data" in err and "step 'train' failed" in err
    # a mistyped --input is a usage error found before the training run, not after it
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o2"), "--input", str(tmp_path / "typo")]) == 2
    assert "--input" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_demo_refuses_a_config_without_image_data(tmp_path: Path, capsys):
    """dSprites has no image folder (data.root null): one line naming the config, not a TypeError."""
    config = REPO / "configs" / "dsprites_beta_vae.yaml"
    assert main(["--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: the demo needs an image dataset config") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
