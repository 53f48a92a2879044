"""Run the project's own commands as child processes, one step at a time: what a user would type, each
step isolated (a crash in one cannot leave another's state half-changed, and the orchestrators,
training.retrain and runtime.demo, import none of the layers they drive)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


class StepFailed(RuntimeError):
    """A step's command exited non-zero; its own message is above and in the step's log."""


def run_step(name: str, module: str, args: list[str], logs: Path, timings: dict[str, float]) -> None:
    """`python -m module args` as a child, its output shown and kept in logs/<name>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    print(f"== {name}: python -m {module} {' '.join(args)}", flush=True)
    started = time.perf_counter()
    with open(logs / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
        except BaseException:
            # interrupted here (SIGTERM to this process alone, Ctrl-C, a failed write): the step
            # must not run on as an orphan, writing into a staging folder nobody owns any more
            stop(proc)
            raise
        rc = proc.wait()
    timings[name] = round(time.perf_counter() - started, 1)
    if rc:
        raise StepFailed(f"step '{name}' failed (exit {rc}); its log: {logs / f'{name}.log'}")
    print(f"== {name} done in {timings[name]:.0f} s", flush=True)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Ask a step's child to end (SIGTERM: it takes its own Ctrl-C path), then kill it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
