"""Run the project's own commands as child processes, one step at a time: what a user would type, each
step isolated (a crash in one cannot leave another's state half-changed, and the orchestrators,
training.retrain and runtime.demo, import none of the layers they drive)."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# a training step's progress lines (training.loop.log): training.train's after each epoch "epoch 12/150
# step 480 loss ...", families.discriminative.train's every few dozen steps "step 300/1500 loss ..."
EPOCH_LINE = re.compile(r"^(epoch|step) (\d+)/(\d+) ")
QUIET_TAIL = 20      # lines of a quiet step's output shown when it fails
LOG_EVERY_S = 180.0  # how often a step's progress is said where no terminal shows a bar
PROJECT_AFTER_S = 90.0  # a step's progress projects its end only after this long


class StepFailed(RuntimeError):
    """A step's command exited non-zero; its own message is above and in the step's log."""


class StepStopped(StepFailed):
    """A step stopped at its deadline (run_step(deadline=...)) rather than failed on its own."""


def run_step(name: str, module: str, args: list[str], logs: Path, timings: dict[str, float],
             epochs: bool = False, quiet: bool = False, deadline: float | None = None) -> None:
    """`python -m module args` as a child, its output shown and kept in logs/<name>.log. epochs:
    the child prints training.train's epoch lines, shown as progress (EpochProgress) rather than
    one line each. quiet: the output goes to the log alone (the automatic set-up's many builds and
    scores), its last lines shown only when the step fails. deadline (time.monotonic()): the step
    is stopped (StepFailed) at it, or sooner once its progress lines say it cannot end by it."""
    logs.mkdir(parents=True, exist_ok=True)
    print(f"== {name}: python -m {module} {' '.join(args)}", flush=True)
    started = time.perf_counter()
    shown = EpochProgress(name) if epochs and not quiet else None
    tail: deque[str] = deque(maxlen=QUIET_TAIL)
    late: list[str] = []
    with open(logs / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                **child_options())
        assert proc.stdout is not None
        watch = _Deadline(proc, deadline, late) if deadline is not None else None
        try:
            for line in proc.stdout:
                log.write(line)
                if quiet:
                    tail.append(line)
                elif shown is None:
                    sys.stdout.write(line)
                elif not shown.take(line):
                    shown.write(line)
                if watch is not None:
                    watch.check(line)
        except BaseException:
            # interrupted here (SIGTERM to this process alone, Ctrl-C, a failed write): the step
            # must not run on as an orphan, writing into a staging folder nobody owns any more
            stop(proc)
            raise
        finally:
            if shown is not None:
                shown.close()
            if watch is not None:
                watch.cancel()
        rc = proc.wait()
    timings[name] = round(time.perf_counter() - started, 1)
    if late:
        raise StepStopped(f"step '{name}' stopped: {late[0]}; its log: {logs / f'{name}.log'}")
    if rc:
        sys.stdout.writelines(tail)
        raise StepFailed(f"step '{name}' failed (exit {rc}); its log: {logs / f'{name}.log'}")
    print(f"== {name} done in {timings[name]:.0f} s", flush=True)


class _Deadline:
    """Stops a step at its deadline (a timer: a step may print nothing for minutes) or as soon as
    its progress lines project its end past it: the rate is taken from its first progress line on
    (the time before it, loading and registering the data, says nothing of the rest) and only
    after PROJECT_AFTER_S of them."""

    def __init__(self, proc: subprocess.Popen, deadline: float, late: list[str]) -> None:
        self.proc, self.deadline, self.late = proc, deadline, late
        self.first: tuple[float, int] | None = None
        self.timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._stop,
                                     ["it ran to the end of the budget"])
        self.timer.daemon = True
        self.timer.start()

    def check(self, line: str) -> None:
        m = EPOCH_LINE.match(line)
        if m is None:
            return
        now, unit, done, total = time.monotonic(), m.group(1), int(m.group(2)), int(m.group(3))
        if self.first is None:
            self.first = (now, done)
            return
        t0, d0 = self.first
        if now - t0 < PROJECT_AFTER_S or done <= d0:
            return
        more = (now - t0) / (done - d0) * (total - done)
        if now + more > self.deadline:
            self._stop(f"at {unit} {done}/{total} it would need about {_minutes(more)} more, and "
                       f"{_minutes(self.deadline - now)} were left in the budget")

    def _stop(self, why: str) -> None:
        if not self.late:
            self.late.append(why)
        stop(self.proc)

    def cancel(self) -> None:
        self.timer.cancel()


class EpochProgress:
    """A training step's epoch lines (EPOCH_LINE) as one progress bar with the step's name, the
    epochs and the time left where stderr is a terminal, else as one line every `every_s` seconds
    (a log must not get a redraw per epoch); every other line passes through. training.retrain was
    silent for the whole training step (20-30 minutes for the screw model): it passed --quiet."""

    def __init__(self, name: str, every_s: float = LOG_EVERY_S, terminal: bool | None = None) -> None:
        self.name, self.every_s = name, every_s
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.started = self.said = time.monotonic()
        self.bar: tqdm | None = None

    def take(self, line: str) -> bool:
        """Show an epoch line as progress (True); False for any other line."""
        m = EPOCH_LINE.match(line)
        if m is None:
            return False
        unit, done, total = m.group(1), int(m.group(2)), int(m.group(3))
        if self.terminal:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.name, unit=unit, file=sys.stderr, dynamic_ncols=True,
                                leave=False)
            self.bar.update(done - self.bar.n)
            return True
        now = time.monotonic()
        if now - self.said >= self.every_s:
            self.said = now
            left = (now - self.started) / max(done, 1) * (total - done)
            print(f"== {self.name}: {unit} {done}/{total}, {_minutes(now - self.started)} in, about {_minutes(left)} "
                  "left", flush=True)
        return True

    def write(self, line: str) -> None:
        """A line that is not an epoch's: above the bar while one is drawn."""
        if self.bar is None:
            sys.stdout.write(line)
        else:
            self.bar.write(line.rstrip("\n"), file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Ask a step's child to end (SIGTERM: it takes its own Ctrl-C path), then kill it; on POSIX
    the signal goes to the step's process group, its own children included (data loader workers)."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def child_options() -> dict[str, Any]:
    """Popen options that tie a step's child to this process: a process group of its own (stop()
    reaches the whole step; Ctrl-C reaches this process, which stops the step) and, on Linux, the
    kernel's SIGKILL to the child when this process dies, however it dies. A SIGKILL to
    training.retrain used to leave its training step running as an orphan, writing into a staging
    folder that the next run had already removed."""
    if os.name != "posix":
        return {}
    return {"process_group": 0, **({"preexec_fn": hook} if (hook := _die_with_parent()) else {})}


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn setting PR_SET_PDEATHSIG (Linux only; None where prctl is not there)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would send it
            os._exit(1)
    return hook


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:  # ended meanwhile
        pass
