"""What the configs' comments claim must match what ships (README: configs/screw.yaml, the VAE)."""
from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def header(name: str) -> str:
    """The config's leading comment as one line of text."""
    lines = []
    for line in (CONFIGS / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


def test_the_template_config_does_not_call_itself_the_shipped_model() -> None:
    """configs/screw_template.yaml still called the template "the shipped screw default" after the
    registered VAE of configs/screw.yaml replaced it: a newcomer reading it would deploy the wrong one."""
    text = header("screw_template.yaml")
    assert "shipped screw default" not in text
    assert "configs/screw.yaml" in text and "needs no training" in text
    assert "the shipped screw model" in (CONFIGS / "screw.yaml").read_text()
