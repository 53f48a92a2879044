"""The camera follows its deployment folder: a new `current` version (training.retrain, --rollback)
or SIGHUP reloads the model without stopping the stream; a model that fails to open is reported
and the running one keeps serving."""
from __future__ import annotations

import json
import shutil
import signal
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from core.deployment import Deployment
from runtime import camera
from runtime.reload import Reloader
from test_camera import get
from test_camera_real import hashed_stub, served_url, start_camera, wait_for


def publish(dep: Deployment, folder: Path, thresholds: dict) -> str:
    model = hashed_stub(folder, thresholds=thresholds)
    stage = dep.stage()
    for f in model.parent.iterdir():
        shutil.copy(f, stage / f.name)
    return dep.publish(stage, {"model": model.name}).name


def two_versions(tmp_path: Path, bright: int) -> tuple[Deployment, str, str, Path]:
    """A deployment with v1 (thresholds 0.5 / 0.5) current and v2 (0.3 / 0.9) published beside
    it, and a folder of 4 frames, every other one with a square of `bright` gray."""
    dep = Deployment(tmp_path / "models")
    v1 = publish(dep, tmp_path / "a", {"pixel": 0.5, "image": 0.5})
    v2 = publish(dep, tmp_path / "b", {"pixel": 0.3, "image": 0.9})
    dep.switch(v1)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        img = np.full((48, 48, 3), 40, np.uint8)
        img[10:20, 25:35] = bright if i % 2 else 40
        cv2.imwrite(str(frames / f"{i}.png"), img)
    return dep, v1, v2, frames


def test_a_new_current_version_and_sighup_reload_without_stopping(tmp_path: Path) -> None:
    dep, v1, v2, frames = two_versions(tmp_path, 250)
    proc, err = start_camera(["--engine", str(dep.root), "--source", str(frames), "--loop", "--fps", "20",
                              "--headless", "--serve", "127.0.0.1:0"], tmp_path)
    try:
        url = served_url(proc, err)

        def status() -> dict:
            return json.loads(get(url + "status")[1])

        first = status()["model"]
        assert first["thresholds"]["image"] == 0.5
        inspected = status()["frames"]["inspected"]
        dep.switch(v2)  # what a deployment (or a rollback) does
        wait_for(lambda: status()["model"]["thresholds"]["image"] == 0.9, 30, "the reload to v2", proc, err)
        later = status()
        assert f"/{v2}/" in later["model"]["path"] and f"/{v1}/" in first["path"] and later["model"]["reloaded"]
        assert later["frames"]["inspected"] > inspected and later["source"]["state"] == "live"  # never stopped
        # SIGHUP reloads too; a model that cannot open leaves the running one serving
        (dep.root / v2 / "stub.onnx").write_bytes(b"broken")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, the running model keeps serving" in err.read_text(), 30,
                 "the failed reload's message", proc, err)
        n = status()["frames"]["inspected"]
        wait_for(lambda: status()["frames"]["inspected"] > n + 5, 30, "frames after a failed reload", proc, err)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_frame_log_says_which_model_and_thresholds_judged_each_frame(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: after a reload the log's rows could not be told apart: which version, which
    thresholds judged a frame? A reload record names the new model (version, sha256) and its
    thresholds, and every row carries the version and thresholds of the model that judged it (a
    frame already inferred by the old model is still its row, even after the record)."""
    monkeypatch.setattr(Reloader, "WATCH_EVERY_S", 0.1)
    dep, v1, v2, frames = two_versions(tmp_path, 180)  # 0.7: NG under v1 (0.5), OK under v2 (0.9)
    log = tmp_path / "frames.jsonl"
    threading.Timer(0.5, dep.switch, [v2]).start()
    assert camera.main(["--engine", str(dep.root), "--source", str(frames), "--loop", "--fps", "50", "--headless",
                        "--log", str(log), "--max-frames", "80"]) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    header, rows = lines[0]["header"], [r for r in lines if "index" in r]
    [reload] = [r["reload"] for r in lines if "reload" in r]
    sha = {v: yaml.safe_load((dep.root / v / "stub.yaml").read_text())["files"]["stub.onnx"]["sha256"] for v in (v1, v2)}
    assert header["model"]["version"] == v1 and header["model"]["sha256"] == sha[v1]
    assert reload["model"]["version"] == v2 and reload["model"]["sha256"] == sha[v2]
    assert reload["thresholds"]["pixel"] == 0.3 and reload["thresholds"]["image"] == 0.9 and reload["time"]
    models = [r["model"] for r in rows]
    assert models[0] == v1 and models[-1] == v2 and models == sorted(models)  # v1 until the swap, then v2
    for r in rows:
        th = {v1: {"pixel": 0.5, "image": 0.5}, v2: {"pixel": 0.3, "image": 0.9}}[r["model"]]
        assert r["thresholds"] == th and r["verdict"] == ("NG" if r["score"] >= th["image"] else "OK"), r
    assert {r["verdict"] for r in rows if r["model"] == v1} == {"OK", "NG"}  # bright frames: NG under v1 only
    assert {r["verdict"] for r in rows if r["model"] == v2} == {"OK"}
