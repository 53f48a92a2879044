"""One exit-code rule for every command: 2 for anything typed wrong (a missing path included), with
one line naming it; 1 for failures while working; 0 for --help."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

MISSING = "/nonexistent/input"
COMMANDS = [
    ("export.onnx", ["--checkpoint", MISSING, "--out", "{tmp}/m.onnx"]),
    ("export.check", ["--onnx", MISSING, "--checkpoint", MISSING]),
    ("export.tensorrt", ["--onnx", MISSING, "--check-only"]),
    ("families.template.build", ["--data", MISSING, "--out", "{tmp}/t.onnx"]),
    ("training.disentanglement", ["--checkpoint", MISSING]),
    ("training.retrain", ["--config", MISSING, "--data", MISSING, "--deploy", "{tmp}/d"]),
    ("calibration.calibrate", ["--engine", MISSING, "--data", MISSING]),
    ("runtime.inspect", ["--engine", MISSING, "--input", MISSING, "--output", "{tmp}/o"]),
    ("runtime.camera", ["--engine", MISSING]),
    ("runtime.demo", ["--config", MISSING]),
    ("bench.camera", ["--engine", MISSING]),
]


@pytest.mark.parametrize("module, argv", COMMANDS, ids=[m for m, _ in COMMANDS])
def test_a_missing_path_is_a_usage_error(module: str, argv: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    main = importlib.import_module(module).main
    try:
        code = main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as e:  # argparse's parser.error
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert MISSING in err and "Traceback" not in err


@pytest.mark.parametrize("module", sorted({m for m, _ in COMMANDS}))
def test_help_exits_0(module: str, capsys: pytest.CaptureFixture) -> None:
    try:
        code = importlib.import_module(module).main(["--help"])
    except SystemExit as e:
        code = e.code
    assert code in (0, None) and "usage:" in capsys.readouterr().out


# every command with a --threads flag, with the other arguments it needs to reach the check
THREADS = [
    ("calibration.calibrate", ["--engine", MISSING, "--data", MISSING]),
    ("bench.calibration", ["--engine", MISSING, "--data", MISSING]),
    ("bench.camera", ["--engine", MISSING]),
    ("bench.export", []),
    ("bench.localization", ["--config", MISSING]),
    ("bench.residual_attention", ["--checkpoint", MISSING]),
    ("bench.disentanglement", []),
    ("runtime.camera", ["--engine", MISSING]),
    ("runtime.inspect", ["--engine", MISSING, "--input", MISSING, "--output", "{tmp}/o"]),
]


@pytest.mark.parametrize("module, argv", THREADS)
def test_a_negative_thread_count_is_a_usage_error(module: str, argv: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """--threads -3 was accepted (ONNX Runtime or torch failed on it later, or not at all)."""
    main = importlib.import_module(module).main
    try:
        code = main([a.format(tmp=tmp_path) for a in argv] + ["--threads", "-3"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "--threads" in err and "Traceback" not in err, err


@pytest.mark.parametrize("module, what", [("training.train", "training"), ("training.evaluate", "evaluation")])
def test_training_without_torch_names_the_extra_to_install(module: str, what: str) -> None:
    """`python -m training.train --help` on the edge install (no PyTorch) printed a raw ImportError
    traceback: one line naming the extra to install, exit 1."""
    from torchless import run_without_torch

    result = run_without_torch(f"""
import contextlib, io, runpy
sys.argv = [{module!r}, '--help']
err = io.StringIO()
with contextlib.redirect_stderr(err):
    try:
        runpy.run_module({module!r}, run_name='__main__')
        rc = ['no exit', err.getvalue()]
    except SystemExit as e:
        rc = [e.code, err.getvalue()]
""")
    assert result["rc"] == [f"{what} needs the [train] extra: pip install -e '.[train]'", ""]  # exit 1, said once
    assert result["torch"] == []
