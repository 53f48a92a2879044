"""Which files a folder inspection reads: image files under a folder, sorted by relative path (the
report's key and order), with every problem (loops, aliases, broken links, unreadable folders) as an
entry of its own, and the names the report and the pictures use for them."""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Entry:
    rel: str                # posix path relative to --input: the report's key
    path: Path
    error: str | None = None


def reason_of(e: Exception) -> str:
    """One short line: an OSError's strerror (its message would repeat a possibly very long path)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return report_safe(str(e).strip().splitlines()[0][:200]) if str(e).strip() else e.__class__.__name__


def report_name(name: str) -> str:
    """A file name as the report writes it: bytes that are not UTF-8 (Python keeps them as lone
    surrogates, which no UTF-8 writer accepts) become backslash escapes, e.g. caf\\xe9.png, and a
    backslash in a name is doubled first, so that the escaping is reversible (a file literally
    named caf\\xe9.png gets another key). The report key, error texts and picture names all use
    it; reading uses the real path."""
    return report_safe(name.replace("\\", "\\\\"))


def report_safe(obj: Any) -> Any:
    """Every string of a JSON-able value with bytes that are not UTF-8 as backslash escapes
    (paths given on the command line, for the summary's header and the console)."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {k: report_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [report_safe(v) for v in obj]
    return obj


def _key(p: Path | os.DirEntry) -> tuple[int, int] | None:  # type: ignore[type-arg]
    try:
        st = p.stat() if isinstance(p, Path) else p.stat(follow_symlinks=True)
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _is_dir(e: os.DirEntry) -> bool:  # type: ignore[type-arg]
    """From the directory listing itself (d_type): works where stat() of the entry fails."""
    try:
        return e.is_dir(follow_symlinks=False)
    except OSError:
        return False


def discover(root: Path, recursive: bool = False, exclude: Path | None = None,
             scandir: Callable[[Path], Any] | None = None,
             extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Entry]:
    """Image files under root, sorted by relative path; problems become entries with an error.

    Symlinks are followed; a link back to a folder above it (a loop), a folder reached a second
    time through another link (its images are listed once, under the first path) and a link that
    loops on itself are listed with their reason, as is a directory that cannot be listed. `exclude` (the
    output folder when it lies inside the input) is skipped, so a run never inspects its own
    pictures. `scandir` is injectable so tests can simulate unreadable folders (tests run as root).
    """
    if root.is_file():
        return [Entry(report_name(root.name), root)]
    scandir = scandir or os.scandir
    out: list[Entry] = []
    skip = _key(exclude) if exclude is not None and exclude.exists() else None
    visited: dict[tuple[int, int], str] = {}

    def walk(d: Path, rel: str, ancestors: frozenset[tuple[int, int]] = frozenset()) -> None:
        k = _key(d)
        if k is not None and k in ancestors:
            out.append(Entry(rel, d, "symlink loop: a link back to a folder above it"))
            return
        if k is not None and k in visited:  # an alias, not a loop: say where its images are
            out.append(Entry(rel, d, f"same folder as '{visited[k] or '.'}' (reached twice through a "
                                     "symlink): its images are inspected there"))
            return
        if k is not None:
            visited[k] = rel
            ancestors = ancestors | {k}
        try:
            with scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.append(Entry(rel or ".", d, f"cannot list directory ({reason_of(e)})"))
            return
        for e in entries:
            p = Path(e.path)
            name = report_name(e.name)
            r = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(p)  # follows symlinks
            except OSError as err:
                if err.errno == errno.ELOOP:
                    out.append(Entry(r, p, "symlink loop"))
                elif Path(e.name).suffix.lower() in extensions or (recursive and _is_dir(e)):
                    out.append(Entry(r, p, f"cannot access ({reason_of(err)}; broken symlink?)"
                                     if os.path.islink(p) else f"cannot access ({reason_of(err)})"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if skip is not None and (st.st_dev, st.st_ino) == skip:
                    continue
                if recursive:
                    walk(p, r, ancestors)
                continue
            if Path(e.name).suffix.lower() not in extensions:
                continue
            if not stat.S_ISREG(st.st_mode):
                out.append(Entry(r, p, "not a regular file"))
                continue
            out.append(Entry(r, p))

    walk(root, "")
    out.sort(key=lambda e: e.rel)
    return out
