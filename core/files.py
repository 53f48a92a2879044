"""Files written so that a crash never leaves half of one: atomic writes, strict JSON, hashing."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it, which is not thread-safe


def atomic_write(path: str | Path, write: Any, suffix: str = ".tmp", durable: bool = True) -> None:
    """Call write(tmp_path), then rename over `path`: a crash never leaves a half-written file.
    `durable` also survives a power cut (fsync); pictures that can be redrawn skip its cost. A file
    replaced keeps its mode (a sidecar an admin made 0640 stays 0640), and a symbolic link keeps
    linking: the file it names is replaced, not the link."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK  # mkstemp's 0600 would hide a model from the service reading it
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        if durable:
            # fsync before the rename and of the folder after it: otherwise a power cut can leave
            # the new name pointing at a file whose data never reached the disk.
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable and os.name == "posix":
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _temporary_prefix(path: Path) -> str:
    """.X.yaml. for X.yaml: atomic_write's temporaries are named so (mkstemp adds 8 characters and
    the suffix); cut so that the temporary's name fits the file system's 255 bytes whenever the
    final name does."""
    return "." + path.name.encode("utf-8")[:96].decode("utf-8", "ignore") + "."


def remove_stale_temporaries(path: str | Path, older_than_s: float = 60.0, suffix: str = ".tmp") -> list[Path]:
    """Remove the temporaries atomic_write left beside `path` when a kill stopped it between
    creating and renaming one (.X.yaml.k2j_x9qa.tmp): nothing else ever removes them. Only those
    older than `older_than_s`, so a write still under way beside it keeps its temporary. Returns
    what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^{re.escape(_temporary_prefix(path))}[a-z0-9_]{{8}}{re.escape(suffix)}$")
    removed = []
    try:
        candidates = [c for c in path.parent.iterdir() if pattern.match(c.name)]
    except FileNotFoundError:
        return removed
    now = time.time()
    for c in candidates:
        try:
            if now - c.lstat().st_mtime > older_than_s:
                c.unlink()
                removed.append(c)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    return removed


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON: NaN / inf (an undefined metric) become null, which every reader accepts."""
    return json.dumps(_finite(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> None:
    """An atomic, strict JSON file: reports, metrics and benchmark results."""
    text = json_text(obj) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
