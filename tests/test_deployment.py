"""core.deployment: versions published whole, `current` switched atomically, rollback byte for byte."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.deployment import MANIFEST, Deployment, DeploymentError, is_deployment, resolve_model

REPO = Path(__file__).resolve().parents[1]


def stage_model(dep: Deployment, content: bytes, parent: str | None = None) -> object:
    s = dep.stage()
    (s / "screw.onnx").write_bytes(content)
    (s / "screw.yaml").write_text("schema: 2\n")
    return dep.publish(s, {"model": "screw.onnx", "parent": parent})


def test_publish_switch_rollback(tmp_path: Path) -> None:
    dep = Deployment(tmp_path / "models" / "screw")
    assert dep.versions() == [] and dep.current() is None
    with pytest.raises(DeploymentError, match="nothing deployed yet"):
        dep.model()
    v1 = stage_model(dep, b"model one")
    assert v1.name == "v0001" and dep.current() is None  # published is not yet current
    dep.switch(v1)
    v2 = stage_model(dep, b"model two", parent="v0001")
    dep.switch(v2)
    assert os.readlink(dep.root / "current") == "v0002"  # relative: the folder can move
    assert resolve_model(dep.root).read_bytes() == b"model two" and is_deployment(dep.root)
    before = {p.name: p.read_bytes() for p in (dep.root / "v0001").iterdir()}
    frm, to = dep.rollback()
    assert (frm.name, to.name) == ("v0002", "v0001")
    assert {p.name: p.read_bytes() for p in dep.model().parent.iterdir()} == before  # byte for byte
    with pytest.raises(DeploymentError, match="first version"):
        dep.rollback()
    assert [v.name for v in dep.versions()] == ["v0001", "v0002"]
    assert resolve_model(tmp_path / "file.onnx") == tmp_path / "file.onnx"  # not a folder: as given


def test_broken_pointers_and_stale_staging(tmp_path: Path) -> None:
    dep = Deployment(tmp_path / "d")
    v1 = stage_model(dep, b"m")
    dep.switch(v1)
    stale = dep.stage()
    (stale / "half").write_bytes(b"killed mid-copy")
    with pytest.raises(DeploymentError, match="no version v0009"):
        dep.switch("v0009")
    assert dep.current().name == "v0001"
    fresh = dep.stage()  # a new run clears what a killed one left
    assert not stale.exists() and fresh.exists()
    (dep.root / "current").unlink()
    os.symlink("elsewhere", dep.root / "current")
    with pytest.raises(DeploymentError, match="not a version folder"):
        dep.current()


def test_a_published_version_has_the_permissions_of_an_ordinary_install(tmp_path: Path) -> None:
    """Version folders were created 0700 (mkdtemp) and kept files a umask of 077 made 0600: a
    service user could not read the deployed model. Published: folders 0755, files 0644."""
    dep = Deployment(tmp_path / "d")
    staged = dep.stage()
    assert staged.stat().st_mode & 0o777 == 0o700  # what mkdtemp gives
    (staged / "screw.onnx").write_bytes(b"m")
    (staged / "calibration").mkdir(mode=0o700)
    (staged / "calibration" / "roc.png").write_bytes(b"png")
    (staged / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(staged / "run.sh", 0o700)
    for f in ("screw.onnx", "calibration/roc.png"):
        os.chmod(staged / f, 0o600)
    v = dep.publish(staged, {"model": "screw.onnx"})
    modes = {p.relative_to(v.path).as_posix(): p.stat().st_mode & 0o777 for p in v.path.rglob("*")}
    assert v.path.stat().st_mode & 0o777 == 0o755
    assert modes == {"screw.onnx": 0o644, "calibration": 0o755, "calibration/roc.png": 0o644, "run.sh": 0o755,
                     "deployment.json": 0o644}


def test_a_broken_current_is_repaired(tmp_path: Path) -> None:
    """A `current` that named no version, a version with an unreadable manifest, or one whose model
    file was gone blocked rollback (it followed the broken pointer): the tool could not repair what
    it is for. repair() points it at the newest complete version older than the one it named."""
    dep = Deployment(tmp_path / "d")
    dep.switch(stage_model(dep, b"one"))
    v2 = stage_model(dep, b"two", parent="v0001")
    dep.switch(stage_model(dep, b"three", parent="v0002"))
    assert dep.broken() is None
    with pytest.raises(DeploymentError, match="not broken"):
        dep.repair()
    (dep.root / "v0003" / "screw.onnx").unlink()
    assert "v0003/screw.onnx: the model of the current version v0003 is missing" in dep.broken()
    why, to = dep.repair()
    assert to.name == "v0002" and "missing" in why and dep.broken() is None
    (v2.path / MANIFEST).write_text("{ torn")
    why, to = Deployment(dep.root).repair()
    assert "unreadable" in why and to.name == "v0001"
    (dep.root / "current").unlink()
    os.symlink("v0009", dep.root / "current")
    why, to = dep.repair()
    assert "not a version folder" in why and to.name == "v0001"  # the newest complete one
    (dep.root / "v0001" / "screw.onnx").unlink()
    (dep.root / "current").unlink()
    os.symlink("elsewhere", dep.root / "current")
    with pytest.raises(DeploymentError, match="no version is complete"):
        dep.repair()


def test_a_second_run_never_removes_the_staging_of_a_run_still_building(tmp_path: Path) -> None:
    """stage() removes what killed runs left; it used to remove every staging folder, so a second
    training.retrain started on the same deployment deleted the first one's candidate mid-build.
    A run holds the deployment's staging lock until it releases it (or dies: the kernel drops it)."""
    first, second = Deployment(tmp_path / "d"), Deployment(tmp_path / "d")
    building = first.stage()
    (building / "screw.onnx").write_bytes(b"half a candidate")
    with pytest.raises(DeploymentError, match="another run is staging"):
        second.stage()
    assert (building / "screw.onnx").is_file()
    again = first.stage()  # the same run may start over: its own previous staging goes
    assert not building.exists() and again.exists()
    first.release()
    fresh = second.stage()  # the first run is over: what it left is stale
    assert not again.exists() and fresh.exists()
    second.release()


def test_a_stale_staging_folder_is_never_published(tmp_path: Path) -> None:
    """A killed run's orphaned step could go on writing into its staging folder after the next run
    had removed it, recreating it: such a folder is never published, by any run."""
    killed, dep = Deployment(tmp_path / "d"), Deployment(tmp_path / "d")
    stale = killed.stage()
    killed.release()  # what the kernel does when the run dies
    fresh = dep.stage()
    assert not stale.exists() and fresh != stale
    stale.mkdir()  # the orphan writes again
    (stale / "screw.onnx").write_bytes(b"half trained")
    (fresh / "screw.onnx").write_bytes(b"m")
    with pytest.raises(DeploymentError, match="never published"):
        dep.publish(stale, {"model": "screw.onnx"})
    with pytest.raises(DeploymentError, match="never published"):
        Deployment(tmp_path / "d").publish(fresh, {"model": "screw.onnx"})  # not its own either
    assert dep.publish(fresh, {"model": "screw.onnx"}).name == "v0001"
    dep.stage()
    assert not stale.exists()  # and the next run removes it
    dep.release()


def test_a_kill_while_deploying_leaves_current_valid(tmp_path: Path) -> None:
    """SIGKILL at random points of a publish-and-switch loop: `current` always names a complete
    version whose model opens (never a missing or half-written one)."""
    root = tmp_path / "d"
    dep = Deployment(root)
    dep.switch(stage_model(dep, b"v1"))
    code = f"""
import sys
from core.deployment import Deployment
dep = Deployment({str(root)!r})
i = 0
while True:
    i += 1
    s = dep.stage()
    (s / "screw.onnx").write_bytes(b"model %d" % i * 1000)
    (s / "screw.yaml").write_text("schema: 2\\n")
    v = dep.publish(s, {{"model": "screw.onnx", "parent": dep.current().name}})
    dep.switch(v)
"""
    for delay in (0.3, 0.5, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        cur = dep.current()
        assert cur is not None and cur.model.is_file()
        data = cur.model.read_bytes()  # a whole model: the first, or one written completely
        assert data == b"v1" or (data.startswith(b"model ") and len(data) == 1000 * len(data) // 1000
                                   and data == data[:len(data) // 1000] * 1000)
    assert len(dep.versions()) >= 2
