"""Versioned deployment folders: every model the line has run, and an atomic pointer to the one
it runs now.

    models/screw/
        v0001/  screw.onnx  screw.yaml  calibration/  train.yaml  deployment.json  [model.pt]
        v0002/  ...
        current -> v0002          (a symlink, replaced atomically: rename over the old one)

A version folder is staged under a temporary name, written completely, then renamed into place
(`publish`), and only then does `current` move (`switch`): a crash or kill at any moment leaves
`current` naming a complete version, the old one until the switch. A version is never modified
after it is published, so a rollback restores the previous model byte for byte; a published
version has the permissions of an ordinary install (folders 0755, files 0644), so a service user
can read the model it runs. Torch-free: the edge runtime resolves `current`
(runtime.model.open_model accepts a deployment folder).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import atomic_write, json_text

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: stagings are cleared unguarded
    fcntl = None  # type: ignore[assignment]

MANIFEST = "deployment.json"
CURRENT = "current"
STAGING_LOCK = ".staging.lock"
REPORT = "calibration"       # a version's calibration report folder (training.retrain writes it)
_VERSION = re.compile(r"^v(\d{4,})$")


class DeploymentError(RuntimeError):
    """A deployment folder that cannot be read or changed; the message names it and the fix."""


@dataclass(frozen=True)
class Version:
    name: str          # "v0003"
    path: Path
    manifest: dict[str, Any]

    @property
    def number(self) -> int:
        return int(self.name[1:])

    @property
    def model(self) -> Path:
        """The model file this version runs (the manifest's `model`)."""
        return self.path / str(self.manifest["model"])


def is_deployment(path: str | Path) -> bool:
    """Whether `path` is a deployment folder (it has a `current` pointer or version folders)."""
    p = Path(path)
    return p.is_dir() and ((p / CURRENT).is_symlink() or any(_VERSION.match(c.name) for c in p.iterdir()))


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DeploymentError(f"{folder / MANIFEST}: unreadable ({e.__class__.__name__}: {str(e)[:120]})") from e
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise DeploymentError(f"{folder / MANIFEST}: not a deployment manifest (no model file named)")
    return data


class Deployment:
    """One deployment folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock: int | None = None  # the staging lock's descriptor while this run holds it
        self._staged: Path | None = None  # the staging folder this run created, the only one it may publish

    def versions(self) -> list[Version]:
        """Published versions, oldest first (unreadable ones are skipped: list() says why)."""
        if not self.root.is_dir():
            return []
        out = []
        for child in sorted(self.root.iterdir(), key=lambda c: c.name):
            m = _VERSION.match(child.name)
            if m and child.is_dir() and not child.is_symlink():
                try:
                    out.append(Version(child.name, child, read_manifest(child)))
                except DeploymentError:
                    continue
        return sorted(out, key=lambda v: v.number)

    def current(self) -> Version | None:
        """The version `current` points at, or None before the first deployment."""
        link = self.root / CURRENT
        if not link.is_symlink() and not link.exists():
            return None
        target = Path(os.readlink(link)) if link.is_symlink() else link
        name = target.name
        if not _VERSION.match(name) or not (self.root / name).is_dir():
            raise DeploymentError(f"{link}: points at {target}, not a version folder of {self.root}")
        return Version(name, self.root / name, read_manifest(self.root / name))

    def model(self) -> Path:
        """The model file of the current version (DeploymentError when nothing is deployed)."""
        cur = self.current()
        if cur is None:
            raise DeploymentError(f"{self.root}: nothing deployed yet (no `{CURRENT}`); deploy with "
                                  f"python -m training.retrain --deploy {self.root}")
        if not cur.model.is_file():
            raise DeploymentError(f"{cur.model}: the model of the current version is missing")
        return cur.model

    def stage(self, copy_of: Version | None = None) -> Path:
        """A fresh staging folder inside the deployment (same file system: the publish is a
        rename): empty, or holding `copy_of`'s files but its manifest and calibration report (a new
        version of the same model, calibrated again). Stale stagings a killed run left are removed
        first, under the staging lock, which this run then holds until publish() or release():
        another run still building its candidate keeps its folder, and this one is refused
        (DeploymentError) instead of deleting it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._hold_lock()
        for stale in self.root.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staged = self._staged = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        if copy_of is not None:
            # hard links where the file system allows: a model of hundreds of MB costs nothing, and
            # every writer replaces files by rename (core.files.atomic_write), never in place
            shutil.copytree(copy_of.path, staged, symlinks=True, dirs_exist_ok=True, copy_function=_link_or_copy,
                            ignore=lambda folder, names: [n for n in names if Path(folder) == copy_of.path
                                                          and n in (MANIFEST, REPORT)])
        return staged

    def _hold_lock(self) -> None:
        """flock on DEPLOY/.staging.lock, held by this object: the kernel drops it when the process
        dies, however it dies, so a killed run's stagings become removable at once."""
        if self._lock is not None or fcntl is None:
            return
        fd = os.open(self.root / STAGING_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise DeploymentError(f"{self.root}: another run is staging a version here (it holds "
                                  f"{STAGING_LOCK}: a training.retrain still building?); wait for it to end") from e
        self._lock = fd

    def release(self) -> None:
        """Give up the staging lock (publish does; a run whose candidate is set aside or removed
        calls it)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def publish(self, staged: Path, manifest: dict[str, Any]) -> Version:
        """Write the manifest into a complete staging folder and rename it to the next version. Only
        the folder this run's stage() made, under the lock: a killed run's folder, which its orphaned
        steps may still have been writing, is never published (DeploymentError)."""
        if self._staged is None or Path(staged).resolve() != self._staged.resolve() or \
                (fcntl is not None and self._lock is None):
            raise DeploymentError(f"{staged}: not the staging folder this run created; a stale staging folder is "
                                  "never published (the next stage() removes it)")
        if not (staged / str(manifest.get("model", ""))).is_file():
            raise DeploymentError(f"{staged}: the staged version has no model file {manifest.get('model')!r}")
        text = json_text(manifest) + "\n"
        atomic_write(staged / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        _install_modes(staged)
        existing = [v.number for v in self.versions()]
        existing += [int(m.group(1)) for c in self.root.iterdir() if (m := _VERSION.match(c.name))]
        name = f"v{max(existing, default=0) + 1:04d}"
        os.rename(staged, self.root / name)
        _fsync_dir(self.root)
        self._staged = None
        self.release()  # nothing of this run is staged any more
        return Version(name, self.root / name, manifest)

    def switch(self, version: Version | str) -> Version:
        """Point `current` at `version` atomically (a new symlink renamed over the old one)."""
        name = version.name if isinstance(version, Version) else version
        target = self.root / name
        if not _VERSION.match(name) or not target.is_dir():
            raise DeploymentError(f"{self.root}: no version {name}")
        chosen = Version(name, target, read_manifest(target))
        if not chosen.model.is_file():
            raise DeploymentError(f"{chosen.model}: missing: {name} cannot be made current")
        tmp = self.root / f".{CURRENT}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(name, tmp)  # relative: the deployment folder can move as a whole
        os.replace(tmp, self.root / CURRENT)
        _fsync_dir(self.root)
        return chosen

    def broken(self) -> str | None:
        """Why `current` cannot be run (a pointer to no version, an unreadable manifest, a missing
        model file), or None when it can or nothing is deployed yet."""
        try:
            cur = self.current()
        except DeploymentError as e:
            return str(e)
        if cur is not None and not cur.model.is_file():
            return f"{cur.model}: the model of the current version {cur.name} is missing"
        return None

    def repair(self) -> tuple[str, Version]:
        """Point a broken `current` at the newest complete version (its manifest readable, its
        model there) older than the one it named, else the newest complete one. Returns (why it
        was broken, the version now current); DeploymentError when it is not broken or no version
        is complete."""
        why = self.broken()
        if why is None:
            raise DeploymentError(f"{self.root / CURRENT}: not broken, nothing to repair")
        link = self.root / CURRENT
        named = _VERSION.match(Path(os.readlink(link)).name) if link.is_symlink() else None
        complete = [v for v in self.versions() if v.model.is_file() and (named is None or v.name != named.group(0))]
        older = [v for v in complete if named is not None and v.number < int(named.group(1))]
        if not complete:
            raise DeploymentError(f"{self.root}: {why}; and no version is complete (a manifest and its model file) to "
                                  "point `current` at: deploy one with python -m training.retrain")
        return why, self.switch((older or complete)[-1])

    def rollback(self) -> tuple[Version, Version]:
        """Point `current` back at the version it replaced (its manifest's `parent`, else the newest
        older version). Returns (from, to)."""
        cur = self.current()
        if cur is None:
            raise DeploymentError(f"{self.root}: nothing deployed, nothing to roll back")
        parent = cur.manifest.get("parent")
        older = [v for v in self.versions() if v.number < cur.number]
        target = parent if isinstance(parent, str) and (self.root / parent).is_dir() else (older[-1].name if older else None)
        if target is None:
            raise DeploymentError(f"{self.root}: {cur.name} is the first version; there is nothing to roll back to")
        return cur, self.switch(target)


def resolve_model(path: str | Path) -> Path:
    """A model path as given on a command line: a deployment folder means its current model; any
    other path is returned as it is."""
    p = Path(path)
    return Deployment(p).model() if p.is_dir() and is_deployment(p) else p


def published_version(model_path: str | Path) -> Path | None:
    """The version folder a model file lies in when it is part of a published version (a vNNNN
    folder holding a manifest), else None: writers that would modify it (the camera's w key,
    calibration) refuse. DEPLOY/current/X.onnx is its version's file: the folder is resolved."""
    folder = Path(model_path).parent.resolve()
    return folder if _VERSION.match(folder.name) and (folder / MANIFEST).is_file() else None


def report_metrics(report: dict[str, Any]) -> dict[str, float | None]:
    """The numbers a version is gated and listed on, from its calibration.json: the image recall
    at the calibrated threshold (held-out folds' mean when the data allowed folds, else in-sample)
    and the pixel AUPRO; None where the data could not measure them (normal-only, no masks)."""
    folds = (report.get("folds") or {}).get("recall") or {}
    recall = folds.get("mean") if isinstance(folds, dict) and folds.get("mean") is not None else \
        (report.get("in_sample") or {}).get("recall")
    aupro = report.get("aupro")
    return {"recall": recall if isinstance(recall, (int, float)) else None,
            "aupro": aupro if isinstance(aupro, (int, float)) else None}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _install_modes(folder: Path) -> None:
    """Folders 0755, files 0644 (0755 when executable) under `folder`, whatever the umask and
    mkdtemp's 0700 made them: a published version is read by the service that runs it."""
    os.chmod(folder, 0o755)
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chmod(path, 0o755 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o644)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a power cut must not bring back the old name)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
