"""The shared training-loop pieces (training.loop): the device grammar, the cross-process
reductions (placed on the training device, as NCCL needs) and the progress display."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from training import loop
from training.checkpoint import load_checkpoint
from training.train import main as train_main
from training.train import train


class _Reduced(Exception):
    """Raised by the fake all_reduce on the meta device, where no value can come back."""


@pytest.fixture
def fake_all_reduce(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """torch.distributed.all_reduce as two processes holding the same values would see it; records
    every tensor handed to it."""
    seen: list[torch.Tensor] = []

    def all_reduce(t: torch.Tensor, *args: object, **kwargs: object) -> None:
        seen.append(t)
        if t.device.type == "meta":
            raise _Reduced
        t.mul_(2)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    return seen


def test_the_loss_sums_are_reduced_on_the_training_device(fake_all_reduce: list[torch.Tensor]):
    sums = np.array([6.0, 4.0, 2.0])
    out = loop.mean_over_processes(sums, torch.device("cpu"), 2)
    assert isinstance(out, np.ndarray) and out.tolist() == [6.0, 4.0, 2.0]  # the mean over the 2 processes
    assert fake_all_reduce[-1].dtype == torch.float64
    # NCCL reduces GPU tensors only: the tensor must be made on the device it is given (the meta
    # device stands in for a GPU here; nothing can be read back from it, hence the stop)
    with pytest.raises(_Reduced):
        loop.mean_over_processes(sums, torch.device("meta"), 2)
    assert fake_all_reduce[-1].device == torch.device("meta")
    with pytest.raises(_Reduced):
        loop.any_process(True, torch.device("meta"), 2)
    assert fake_all_reduce[-1].device == torch.device("meta")
    # one process: no collective at all
    n = len(fake_all_reduce)
    assert loop.mean_over_processes(sums, torch.device("meta"), 1) is sums
    assert loop.any_process(True, torch.device("meta"), 1) is True
    assert len(fake_all_reduce) == n


def test_any_process_stops_every_process(fake_all_reduce: list[torch.Tensor]):
    assert loop.any_process(True, torch.device("cpu"), 2) is True
    assert loop.any_process(False, torch.device("cpu"), 2) is False


def test_torch_device_takes_the_shared_grammar(monkeypatch: pytest.MonkeyPatch):
    assert loop.torch_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop.torch_device("auto") == torch.device("cpu")
    assert loop.torch_device(None) == torch.device("cpu")
    for text in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match=f"--device {text}: no CUDA device is available"):
            loop.torch_device(text)
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        loop.torch_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert loop.torch_device("auto") == torch.device("cuda")
    assert loop.torch_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="--device cuda:2: there are 2 CUDA devices"):
        loop.torch_device("cuda:2")


def test_train_cli_device_grammar(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "nowhere")))
    for bad in ("gpu", "cuda:x", "cpu:1"):
        with pytest.raises(SystemExit) as e:
            train_main(["--config", str(cfg), "--device", bad])
        assert e.value.code == 2 and "auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_main(["--config", str(cfg), "--device", "cuda:1", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "--device cuda:1: no CUDA device is available" in err and len(err.strip().splitlines()) == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_bar_over_the_run_resumed_at_its_step(mvtec_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bars: list[loop.tqdm] = []

    class Recording(loop.tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.shown = not self.disable  # close() disables it
            bars.append(self)

    monkeypatch.setattr(loop, "tqdm", Recording)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    cfg = tiny_config(mvtec_dir, epochs=2)  # 16 images, batch 4: 4 steps per epoch, 8 in all
    train(cfg, tmp_path / "run", torch.device("cpu"), max_steps=3)
    train(cfg, tmp_path / "run", torch.device("cpu"), resume=True)
    first, resumed = bars
    assert (first.initial, first.total, first.n, first.shown) == (0, 3, 3, True)
    assert (resumed.initial, resumed.total, resumed.n, resumed.shown) == (3, 8, 8, True)
    text = term.getvalue()
    assert "step/s" in text or "s/step" in text          # the rate, and the time left: [elapsed<left]
    assert "8/8 [" in text and "<" in text
    # the per-epoch summary lines stay, for logs
    assert "epoch 1/2 step 4 loss" in text and "epoch 2/2 step 8 loss" in text
    assert load_checkpoint(tmp_path / "run" / "model.pt")["step"] == 8


def test_no_bar_where_stderr_is_not_a_terminal_and_quiet_prints_nothing(mvtec_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    log = io.StringIO()  # a pipe or a CI log: no terminal
    monkeypatch.setattr(sys, "stderr", log)
    cfg = tiny_config(mvtec_dir)
    train(cfg, tmp_path / "a", torch.device("cpu"), max_steps=2)
    assert "%|" not in log.getvalue() and "epoch 0/1 step 2 loss" in log.getvalue()
    # a pipe, a terminal, --quiet in a terminal
    for stderr, enabled, shown in ((io.StringIO(), True, False), (_Terminal(), True, True),
                                   (_Terminal(), False, False)):
        monkeypatch.setattr(sys, "stderr", stderr)
        with loop.progress_bar(10, 0, enabled) as bar:
            assert bar.disable is not shown
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    train(cfg, tmp_path / "b", torch.device("cpu"), max_steps=2, progress=False)
    assert quiet.getvalue() == ""
