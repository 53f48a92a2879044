"""python -m runtime.inspect with a really exported model, in a subprocess that is killed with
SIGKILL mid-run and then resumed: the report is complete, ordered and without duplicates, and
no file was ever left half-written."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import runtime.inspect as ri
from test_runtime_models import REPO, mnist_export  # noqa: F401 - fixture


def make_inputs(folder: Path, n: int, size: int = 600) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.zeros((size, size), np.uint8)
        cv2.line(img, (size // 2, size // 8), (size // 2 + int(rng.integers(-60, 60)), 7 * size // 8), 255,
                 size // 12)  # a "1", more or less
        if i % 4 == 0:
            cv2.circle(img, (size // 3, size // 2), size // 5, 255, size // 20)  # not a 1
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), img)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


def rows(out: Path) -> list[dict]:
    lines = (out / "report.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines]


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path: Path, mnist_export: Path) -> None:
    inp = tmp_path / "in"
    make_inputs(inp, 90)
    common = ["--engine", str(mnist_export), "--input", str(inp), "--batch", "2", "--workers", "1",
              "--save", "overlay,heatmap,mask", "--threshold-pixel", "0.0005", "--threshold-image", "0.001",
              "--quiet"]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "runtime.inspect", *common, "--output", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    report = out / "report.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if report.exists() and report.read_bytes().count(b"\n") >= 12:
            break
        if proc.poll() is not None:
            pytest.fail(f"finished before the kill: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    n_killed = report.read_bytes().count(b"\n")
    assert 12 <= n_killed < 91
    # whatever the moment of the kill: the tables are whole files (atomic rewrites)
    json.loads((out / "summary.json").read_text())
    with open(out / "report.csv", encoding="utf-8") as f:
        list(csv.DictReader(f))

    assert ri.main(common + ["--output", str(out), "--resume"]) == 0
    full = tmp_path / "full"
    assert ri.main(common + ["--output", str(full)]) == 0
    got, want = rows(out), rows(full)
    assert [r["file"] for r in got] == [r["file"] for r in want] == sorted(r["file"] for r in want)
    key = lambda r: (r["file"], r["processing"], r.get("verdict"), r.get("area"), r.get("boxes"))  # noqa: E731
    assert [key(r) for r in got] == [key(r) for r in want]
    for a, b in zip(got, want):
        if a["processing"] == "done":
            assert a["score"] == pytest.approx(b["score"], rel=1e-5)
    assert all(r["verdict"] in ("OK", "NG") for r in got if r["processing"] == "done")
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "complete" and s["counts"]["total"] == 91 and s["counts"]["failed"] == 1
    assert not [p for p in out.rglob(".*") if p.is_file()]  # the kill's temporaries are cleaned up
    for kind, ext in (("overlay", "jpg"), ("heatmap", "jpg"), ("mask", "png")):
        assert len(list((out / kind).glob(f"*.{ext}"))) == 90
