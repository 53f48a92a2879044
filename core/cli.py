"""What every command line shares: one exit-code rule (2 for anything typed wrong, missing paths
included; 1 for failures while working), finite thresholds, SIGTERM taken as Ctrl-C, and silencing
what C libraries print while a run draws its progress."""
from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


class UsageError(Exception):
    """Bad command line or paths: exit 2."""


def require(parser: argparse.ArgumentParser, **paths: str | None) -> None:
    """parser.error (exit 2, with the usage) for a path the user typed that does not exist:
    require(p, config=args.config, data=args.data) checks --config and --data when given."""
    for name, value in paths.items():
        if value is not None and not Path(value).exists():
            parser.error(f"--{name.replace('_', '-')} {value}: not found")


def require_extra(package: str, extra: str, what: str) -> None:
    """Exit 1 with one line naming the extra to install when `package` is not installed: run before
    a module's own `import torch`, so that `python -m training.train --help` on an edge install
    (no PyTorch) says what to do instead of printing an ImportError's traceback. A package that is
    installed but fails to import (a missing library of its own) keeps its real error."""
    try:
        importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name not in (None, package):
            raise
        raise SystemExit(f"{what} needs the [{extra}] extra: pip install -e '.[{extra}]'") from None


def finite_float(text: str) -> float:
    """argparse type: a threshold of nan or inf would make every comparison False or True."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= `low`, so that a count typed wrong (--threads -3, --seed -1) is
    exit 2 with the usage before any work, not a library's traceback minutes later."""
    def convert(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {low}")
        return value
    convert.__name__ = "int"  # argparse names the type in its message: "invalid int value"
    return convert


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (systemd, docker stop) takes the Ctrl-C path for the block, so a run stops the way
    it stops on Ctrl-C (finished rows written, recordings closed) instead of being torn; the
    previous handler is restored after. A no-op outside the main thread, where signals cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what C libraries print (libpng's and libjpeg's warnings about a broken file) to
    /dev/null for the run: the report holds each failure with its reason, and the warnings would
    break the progress bar. Python's own messages keep the real stderr. Only when stderr is the
    process's file descriptor 2 (not under a test's capture)."""
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real or os.name != "posix":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    python_err = sys.stderr
    try:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=python_err.encoding,
                               errors=python_err.errors)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        replaced, sys.stderr = sys.stderr, python_err
        os.dup2(saved, 2)
        replaced.close()
        os.close(saved)
        os.close(devnull)
