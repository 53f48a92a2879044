"""python -m runtime.inspect on every kind of bad input, reports, resume and exit codes.

Uses the stub model of test_runtime_models (anomaly_map = brightness) so that verdicts, masks and
boxes are known exactly; the real exported model is run in test_runtime.py / test_inspect_real.py.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import runtime.inspect as ri
from core import cli
from runtime import batch, reports
from runtime import discover as discover_mod
from core import images
from test_runtime_models import make_stub_model, stub_sidecars  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]


def png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    assert ok
    buf.tofile(str(path))
    return path


def part(defect: bool, size: int = 40) -> np.ndarray:
    img = np.full((size, size), 60, np.uint8)
    if defect:
        img[10:20, 22:34] = 255
    return img


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10000 x 10000 gray JPEG with a bright square in the middle."""
    img = np.full((10000, 10000), 60, np.uint8)
    img[4000:6000, 4000:6000] = 255
    return png(tmp_path_factory.mktemp("huge") / "huge.jpg", img)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stub_model(tmp_path_factory.mktemp("model"))


def make_folder(root: Path, huge: Path | None = None) -> dict[str, str]:
    """Every bad input of the issue; returns {relative path: expected status or 'either'}."""
    exp = {}
    png(root / "good_000.png", part(False)); exp["good_000.png"] = "OK"
    png(root / "good_001.png", part(False)); exp["good_001.png"] = "OK"
    png(root / "defect.png", part(True)); exp["defect.png"] = "NG"
    color = cv2.cvtColor(part(True), cv2.COLOR_GRAY2BGR)
    png(root / "color.jpg", color); exp["color.jpg"] = "NG"
    rgba = np.dstack([cv2.cvtColor(part(False), cv2.COLOR_GRAY2BGR), np.full((40, 40), 128, np.uint8)])
    png(root / "rgba.png", rgba); exp["rgba.png"] = "OK"
    png(root / "gray16.png", part(True).astype(np.uint16) * 257); exp["gray16.png"] = "NG"
    png(root / "tiny_2x2.png", np.full((2, 2), 60, np.uint8)); exp["tiny_2x2.png"] = "OK"
    png(root / "tiny_1x1.png", np.full((1, 1), 60, np.uint8)); exp["tiny_1x1.png"] = "error"
    (root / "zero.png").write_bytes(b""); exp["zero.png"] = "error"
    (root / "corrupt.png").write_bytes(os.urandom(2000)); exp["corrupt.png"] = "error"
    full = png(root / "_tmp.png", part(True)).read_bytes()
    (root / "_tmp.png").unlink()
    (root / "truncated.png").write_bytes(full[: len(full) // 2]); exp["truncated.png"] = "error"
    (root / "text.jpg").write_text("not an image at all\n"); exp["text.jpg"] = "error"
    (root / "readme.txt").write_text("ignored: not an image extension\n")
    png(root / "名前 with space.png", part(True)); exp["名前 with space.png"] = "NG"
    os.symlink("loop.png", root / "loop.png"); exp["loop.png"] = "error"
    os.symlink("missing.png", root / "broken.png"); exp["broken.png"] = "error"
    png(root / "sub" / "a.png", part(False)); exp["sub/a.png"] = "OK"
    os.symlink("..", root / "sub" / "back"); exp["sub/back"] = "error"  # a directory loop
    png(root / "locked" / "hidden.png", part(False)); exp["locked"] = "error"
    if huge is not None:
        os.symlink(huge, root / "huge.jpg"); exp["huge.jpg"] = "NG"
    return exp


def lock(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable directory. Tests run as root, where chmod 000 does not stop reading, so
    os.scandir is also made to fail for it as it would for another user."""
    locked = root / "locked"
    os.chmod(locked, 0)
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if Path(str(path)).resolve() == locked.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)


def snapshot(root: Path, skip: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath).resolve() == skip.resolve():
            dirs[:] = []
            continue
        for f in files:
            p = Path(dirpath) / f
            if p.is_file():
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "report.jsonl").read_text(encoding="utf-8").splitlines()]


def test_every_bad_input_is_inspected_or_listed(tmp_path: Path, model: Path, huge_jpeg: Path,
                                                stub_sidecars: None, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    inp = tmp_path / "in"
    exp = make_folder(inp, huge_jpeg)
    lock(inp, monkeypatch)
    out = inp / "report"  # the output folder inside the input folder
    before = snapshot(inp, out)
    try:
        code = ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--recursive",
                        "--batch", "3", "--save", "overlay,mask,heatmap", "--quiet"])
    finally:
        os.chmod(inp / "locked", 0o755)
    assert code == 0
    assert snapshot(inp, out) == before  # inputs never modified (content and mtime)
    got = rows(out)
    assert [r["file"] for r in got] == sorted(exp)  # one row per input, in sorted order
    by = {r["file"]: r for r in got}
    for f, want in exp.items():
        r = by[f]
        if want == "error":
            assert r["processing"] == "failed" and r["reason"], f
        else:
            assert r["processing"] == "done" and r["verdict"] == want, (f, r)
    assert "empty file" in by["zero.png"]["reason"] and "zero.png" in by["zero.png"]["reason"]
    assert "too small" in by["tiny_1x1.png"]["reason"]
    assert "symlink loop" in by["loop.png"]["reason"] and "symlink loop" in by["sub/back"]["reason"]
    assert "broken symlink" in by["broken.png"]["reason"]
    assert "cannot list directory" in by["locked"]["reason"]
    assert not any(f.startswith("report/") for f in by)  # its own output is never inspected

    # defect box mapped back to original pixels: the square at x 22..34, y 10..20 of 40x40
    d = by["defect.png"]
    assert d["width"] == 40 and d["height"] == 40 and d["n_boxes"] == 1
    x, y, w, h = d["boxes"][0]
    assert abs(x - 22) <= 2 and abs(y - 10) <= 2 and abs(x + w - 34) <= 2 and abs(y + h - 20) <= 2
    assert 80 <= d["area"] <= 160
    # the 10000 x 10000 image: decoded at 1/2 under the default pixel limit, boxes in full-size pixels
    hg = by["huge.jpg"]
    assert (hg["width"], hg["height"], hg["decode_scale"]) == (10000, 10000, 2.0)
    x, y, w, h = hg["boxes"][0]
    # (the stub model sees 16 x 16 pixels: its bilinear map blurs the square's edges by ~1 model pixel)
    assert abs(x - 4000) < 400 and abs(x + w - 6000) < 400 and abs(hg["area"] - 4e6) < 0.35 * 4e6
    assert by["gray16.png"]["score"] == pytest.approx(1.0, abs=0.01)

    # pictures: tree mirrored, original size, unicode names written
    for kind, ext in (("overlay", "jpg"), ("mask", "png"), ("heatmap", "jpg")):
        p = out / kind / f"defect.{ext}"
        img = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.shape[:2] == (40, 40), kind
        assert (out / kind / f"名前 with space.{ext}").exists() and (out / kind / "sub" / f"a.{ext}").exists()
    mask = cv2.imread(str(out / "mask" / "defect.png"), cv2.IMREAD_GRAYSCALE)
    assert np.count_nonzero(mask) == d["area"]
    assert cv2.imread(str(out / "mask" / "huge.png"), cv2.IMREAD_GRAYSCALE).shape == (5000, 5000)
    assert not (out / "overlay" / "zero.jpg").exists()
    assert sorted(p.name for p in (out / "overlay").iterdir() if p.is_file()) == sorted(
        f.rsplit(".", 1)[0] + ".jpg" for f, v in exp.items() if v != "error" and "/" not in f)

    # CSV and JSONL agree; summary counts
    with open(out / "report.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["file"] for r in table] == [r["file"] for r in got]
    assert all(t["processing"] == r["processing"] and t["verdict"] == (r.get("verdict") or "") for t, r in zip(table, got))
    s = json.loads((out / "summary.json").read_text())
    n_err = sum(v == "error" for v in exp.values())
    n_ng = sum(v == "NG" for v in exp.values())
    assert s["status"] == "complete"
    assert s["counts"] == {"total": len(exp), "inspected": len(exp) - n_err, "failed": n_err,
                           "ok": len(exp) - n_err - n_ng, "ng": n_ng, "no_verdict": 0}
    assert s["ng_rate"] == pytest.approx(n_ng / (len(exp) - n_err))
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p95"] <= s["latency_ms"]["p99"]
    assert s["this_run"]["images_per_s"] > 0
    assert s["thresholds"] == {"pixel": 0.5, "image": 0.5, "source": "sidecar"}
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_unicode_and_space_names_in_paths(tmp_path: Path, model: Path, stub_sidecars: None) -> None:
    inp = tmp_path / "dossier d'entrée ü"
    png(inp / "pièce 1.png", part(True))
    out = tmp_path / "sortie é"
    assert ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--save", "overlay",
                    "--quiet", "--format", "png"]) == 0
    assert rows(out)[0]["verdict"] == "NG" and (out / "overlay" / "pièce 1.png").exists()


def test_batch_size_does_not_change_results(tmp_path: Path, model: Path, stub_sidecars: None) -> None:
    inp = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(11):
        png(inp / f"{i:02d}.png", rng.integers(0, 256, (30 + i, 25), dtype=np.uint8))
    res = []
    for b in (1, 4, 8):
        out = tmp_path / f"out{b}"
        assert ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--batch", str(b),
                        "--quiet", "--workers", "1" if b == 1 else "2"]) == 0
        res.append([(r["file"], r["score"], r["area"], r["boxes"]) for r in rows(out)])
    assert res[0] == res[1] == res[2]


def test_resume_after_a_killed_run_has_no_duplicates(tmp_path: Path, model: Path, stub_sidecars: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "in"
    for i in range(20):
        png(inp / f"{i:02d}.png", part(i % 3 == 0))
    (inp / "bad.png").write_bytes(b"junk")
    args = ["--engine", str(model), "--input", str(inp), "--batch", "4", "--quiet", "--save", "mask"]
    full = tmp_path / "full"
    assert ri.main(args + ["--output", str(full)]) == 0

    out = tmp_path / "out"
    real = batch.finish_job
    calls = {"n": 0}

    def dying(*a: object, **k: object) -> dict:
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt  # the run is stopped in the middle
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "finish_job", dying)
    assert ri.main(args + ["--output", str(out)]) == 1
    monkeypatch.setattr(batch, "finish_job", real)
    partial = rows(out)
    assert 0 < len(partial) < 21
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    with open(out / "report.jsonl", "a", encoding="utf-8") as f:
        f.write('{"file": "15.png", "status": "o')  # a row torn by a kill mid-write
    assert ri.main(args + ["--output", str(out), "--resume"]) == 0
    got = rows(out)
    assert [r["file"] for r in got] == [r["file"] for r in rows(full)]  # complete, ordered, no duplicates
    strip = lambda r: {k: r.get(k) for k in ("file", "processing", "verdict", "score", "area", "boxes")}  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in rows(full)]
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"]["total"] == 21 and s["this_run"]["rows"] == 21 - len(partial)
    with open(out / "report.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 21
    # resuming a finished report does nothing; resuming with other thresholds is refused
    assert ri.main(args + ["--output", str(out), "--resume"]) == 0
    assert len(rows(out)) == 21
    assert ri.main(args + ["--output", str(out), "--resume", "--threshold-image", "0.9"]) == 2


def test_no_thresholds_reports_scores_only(tmp_path: Path, stub_sidecars: None,
                                           capsys: pytest.CaptureFixture) -> None:
    m = make_stub_model(tmp_path / "m", thresholds={})
    inp = tmp_path / "in"
    big = part(False, size=200)  # large enough for a readable badge
    big[40:120, 60:160] = 255
    png(inp / "a.png", big)
    out = tmp_path / "out"
    assert ri.main(["--engine", str(m), "--input", str(inp), "--output", str(out), "--quiet",
                    "--save", "mask,heatmap,overlay"]) == 0
    err = capsys.readouterr().err
    assert "no thresholds" in err and "NO VERDICT for every part" in err and "--save mask needs a pixel threshold" in err
    r = rows(out)[0]
    # the verdict is an explicit state, never an empty cell beside processing=done that reads as OK
    assert r["verdict"] == "NO VERDICT" and r["area"] is None and r["score"] == pytest.approx(1.0)
    assert list(csv.DictReader((out / "report.csv").open()))[0]["verdict"] == "NO VERDICT"
    overlay = cv2.imread(str(out / "overlay" / "a.jpg"))
    badge = overlay[:10, :40].reshape(-1, 3).astype(int)
    # the badge is drawn in the no-verdict gray, neither OK's green nor NG's red
    assert (np.abs(badge - [220, 220, 220]).sum(1) < 60).any()
    assert not (np.abs(badge - [80, 200, 60]).sum(1) < 60).any() and not (np.abs(badge - [40, 40, 230]).sum(1) < 60).any()
    assert not (out / "mask" / "a.png").exists() and (out / "heatmap" / "a.jpg").exists()
    s = json.loads((out / "summary.json").read_text())
    assert s["thresholds"]["source"] == "none" and s["ng_rate"] is None and s["counts"]["no_verdict"] == 1
    # thresholds given on the command line
    out2 = tmp_path / "out2"
    assert ri.main(["--engine", str(m), "--input", str(inp), "--output", str(out2), "--quiet",
                    "--threshold-pixel", "0.5", "--threshold-image", "0.99"]) == 0
    r = rows(out2)[0]
    assert r["verdict"] == "NG" and r["area"] > 0


def test_exit_codes(tmp_path: Path, model: Path, stub_sidecars: None) -> None:
    inp = tmp_path / "in"
    png(inp / "a.png", part(False))
    base = ["--engine", str(model), "--quiet"]
    assert ri.main(base + ["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert ri.main(base + ["--input", str(inp), "--output", str(inp)]) == 2      # would write among inputs
    assert ri.main(base + ["--input", str(inp), "--output", str(tmp_path / "o"), "--save", "video"]) == 2
    assert ri.main(base + ["--input", str(inp), "--output", str(tmp_path / "o"), "--batch", "0"]) == 2
    assert ri.main(base + ["--input", str(inp), "--output", str(tmp_path / "o"), "--device", "gpu"]) == 2
    assert ri.main(["--input", str(inp)]) == 2                                    # argparse: missing args
    # a path typed wrong is a usage error, the model's or the input's alike
    assert ri.main(["--engine", str(tmp_path / "nope.onnx"), "--input", str(inp),
                    "--output", str(tmp_path / "o")]) == 2
    assert ri.main(["--engine", str(tmp_path), "--input", str(inp), "--output", str(tmp_path / "o")]) == 2
    side = model.with_suffix(".yaml")
    moved = tmp_path / "side.yaml"
    side.rename(moved)
    try:
        assert ri.main(base + ["--input", str(inp), "--output", str(tmp_path / "o")]) == 1  # no sidecar
    finally:
        moved.rename(side)
    # a single image file as input works too
    assert ri.main(base + ["--input", str(inp / "a.png"), "--output", str(tmp_path / "one")]) == 0
    assert rows(tmp_path / "one")[0]["file"] == "a.png"


def test_discover_order_and_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = make_folder(tmp_path)
    lock(tmp_path, monkeypatch)
    try:
        flat = ri.discover(tmp_path, recursive=False)
        deep = ri.discover(tmp_path, recursive=True, exclude=tmp_path / "sub")
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert [e.rel for e in flat] == sorted(k for k in exp if "/" not in k and k != "locked")
    assert "sub/a.png" not in {e.rel for e in deep} and "locked" in {e.rel for e in deep}
    assert {e.rel: e.error for e in deep}["loop.png"] == "symlink loop"


def test_a_folder_reached_twice_is_an_alias_not_a_loop(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    png(tmp_path / "real" / "a.png", part(True, size=32))
    os.symlink("real", tmp_path / "zlink")  # sorts after the folder it points at
    found = {e.rel: e.error for e in ri.discover(tmp_path, recursive=True)}
    assert found["real/a.png"] is None and "zlink/a.png" not in found
    assert "same folder as 'real'" in found["zlink"] and "loop" not in found["zlink"]


def test_decode_formats_and_pixel_guard(tmp_path: Path) -> None:
    img = part(True, size=64)
    p16 = png(tmp_path / "g16.png", img.astype(np.uint16) * 257)
    d = images.decode(p16, 1)
    assert d.image.dtype == np.uint8 and d.image.shape == (64, 64, 1) and d.image.max() == 255
    rgba = png(tmp_path / "rgba.png", np.dstack([img, img, img, img]))
    assert images.decode(rgba, 3).image.shape == (64, 64, 3)
    assert images.decode(rgba, 1).image.shape == (64, 64, 1)
    # over the pixel limit: reduced decode, scale recorded, original size kept
    big = png(tmp_path / "big.png", np.zeros((400, 300), np.uint8))
    d = images.decode(big, 1, max_pixels=10_000)
    assert d.scale == 4.0 and d.image.shape == (100, 75, 1) and d.original == (400, 300)
    with pytest.raises(images.ImageError, match="too large"):
        images.decode(big, 1, max_pixels=100)
    assert images.reduction_for(10000, 10000, ri.DEFAULT_MAX_PIXELS) == 2


def test_a_fifo_is_refused_by_every_decode_path_and_never_blocks(tmp_path: Path) -> None:
    """A FIFO put where an image was listed (after discovery, so discovery's check cannot see it):
    decode() read the header with Pillow first, which opens by path and blocked for ever waiting
    for a writer, before read_regular's non-blocking check on the descriptor was ever reached."""
    import threading

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def attempt() -> None:
        for call in (lambda: images.decode(fifo, 1), lambda: images.read_image(fifo, 1)):
            try:
                call()
            except images.ImageError as e:
                errors.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5)
    blocked = t.is_alive()
    if blocked:  # let the stuck reader go: a writer that opens and closes gives it end-of-file
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
    assert not blocked, "decode() blocked on a FIFO"
    assert len(errors) == 2 and all("not a regular file" in str(e) for e in errors), errors


def test_huge_jpeg_decode_memory_is_bounded(huge_jpeg: Path) -> None:
    """The 10000 x 10000 JPEG is decoded at 1/2 inside libjpeg: the process never holds the
    100 MB full-size image (a full decode would raise peak RSS by >= 100 MB)."""
    # VmHWM (this process's peak RSS), not ru_maxrss: Linux carries ru_maxrss over exec from the
    # forking parent (pytest), which would hide the decode's peak
    code = ("import re, sys; from pathlib import Path; from core import images; "
            "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1)); "
            "b = hwm(); "
            f"d = images.decode(Path({str(huge_jpeg)!r}), 1); "
            "print(d.image.shape[0], (hwm() - b) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    rows_, mb = out.stdout.split()
    assert int(rows_) == 5000 and float(mb) < 80, out.stdout


def test_clean_temporaries_removes_only_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "overlay" / "sub").mkdir(parents=True)
    keep = [out / "report.csv", out / "overlay" / ".hidden.jpg", out / "overlay" / "sub" / "a.jpg",
            out / "overlay" / ".abcdefgh.jpg.jpg"]
    junk = [out / ".report.csv.k2j4h5g6.tmp", out / ".summary.json.abc_1234.tmp",
            out / "overlay" / "sub" / ".a.jpg.zz99yy88.jpg", out / "overlay" / ".x.bmp.jpg.q1w2e3r4.jpg"]
    for p in keep + junk:
        p.write_bytes(b"x")
    assert ri.clean_temporaries(out) == len(junk)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in junk)


def test_non_finite_output_is_an_error_row(tmp_path: Path, model: Path, stub_sidecars: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN/inf anomaly map fails that image (an error row), never passes it as OK."""
    import runtime.model as rm

    inp = tmp_path / "in"
    png(inp / "good.png", part(False))
    png(inp / "nan.png", np.zeros((40, 40), np.uint8))
    png(inp / "inf.png", np.full((40, 40), 7, np.uint8))
    real = rm.Model.__call__

    def broken(self: rm.Model, images: np.ndarray, outputs: object = None) -> dict[str, np.ndarray]:
        out = real(self, images, outputs)
        top = images.reshape(len(images), -1).max(1)
        out["anomaly_map"][top == 0] = np.nan
        out["anomaly_map"][top == 7] = np.inf
        return out

    monkeypatch.setattr(rm.Model, "__call__", broken)
    out = tmp_path / "out"
    assert ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet",
                    "--save", "overlay,mask"]) == 0
    by = {r["file"]: r for r in rows(out)}
    assert by["good.png"]["processing"] == "done" and by["good.png"]["verdict"] == "OK"
    for f in ("nan.png", "inf.png"):
        assert by[f]["processing"] == "failed" and by[f].get("verdict") is None, by[f]
        assert by[f]["reason"] == f"{f}: model output is not finite (NaN/inf in anomaly_map)"
        assert not (out / "overlay" / f"{f}.jpg").exists()
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"]["failed"] == 2 and s["counts"]["ok"] == 1
    assert s["failures"] == {"model output is not finite": 2}


def test_picture_that_cannot_be_written_is_an_error_row(tmp_path: Path, model: Path, stub_sidecars: None) -> None:
    """A 253-byte input name fits the file system; beside a same-stem twin its picture keeps the
    full name (+ '.jpg'), which does not: that image gets a failed row with its score and verdict,
    the others are inspected, and --resume works."""
    inp = tmp_path / "in"
    long_name = "検" * 83 + ".png"  # 3 bytes per character: 253 bytes
    png(inp / long_name, part(True))
    png(inp / long_name.replace(".png", ".bmp"), part(False))
    png(inp / "a.png", part(False))
    out = tmp_path / "out"
    args = ["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet", "--save", "overlay"]
    assert ri.main(args) == 0
    by = {r["file"]: r for r in rows(out)}
    r = by[long_name]
    assert r["processing"] == "failed" and r["verdict"] == "NG" and r["score"] == pytest.approx(1.0, abs=0.01)
    assert r["reason"] == f"{long_name}: cannot write overlay picture (File name too long)"
    assert r["pictures"] is None
    assert by["a.png"]["processing"] == "done" and (out / "overlay" / "a.jpg").exists()
    s = json.loads((out / "summary.json").read_text())
    # failed (no picture) and inspected (it has a verdict): the NG part is not lost from the NG count
    assert s["status"] == "complete" and s["counts"]["failed"] == 2 and s["counts"]["inspected"] == 3
    assert s["counts"]["ng"] == 1 and s["counts"]["ok"] == 2 and s["ng_rate"] == pytest.approx(1 / 3, abs=1e-5)
    assert s["this_run"]["inspected"] == 3  # the same meaning as counts.inspected
    assert s["failures"] == {"cannot write overlay picture": 2}
    assert not list((out / "overlay").glob(".*"))  # no temporary left behind
    assert ri.main(args + ["--resume"]) == 0 and len(rows(out)) == 3


def test_reduced_decode_ignores_exif_orientation(tmp_path: Path) -> None:
    """Like the full-size decode (IMREAD_UNCHANGED, as in training), the reduced decode of a JPEG
    tagged orientation=6 (rotate 90 degrees) keeps the stored pixel layout."""
    import struct

    img = np.full((100, 200), 30, np.uint8)
    img[:, :50] = 220  # bright left quarter: rotated, it would be the top
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    # EXIF APP1: big-endian TIFF header, one IFD entry: Orientation (0x0112), SHORT, count 1, value 6
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    path = tmp_path / "tagged.jpg"
    path.write_bytes(data[:2] + app1 + data[2:])  # right after SOI
    assert cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape == (200, 100)  # the tag is honoured by default

    full = images.decode(path, 1)
    assert full.image.shape == (100, 200, 1) and full.scale == 1.0
    for channels in (1, 3):
        d = images.decode(path, channels, max_pixels=10_000)  # 20000 pixels: decoded at 1/2
        assert d.image.shape == (50, 100, channels) and d.original == (100, 200) and d.scale == 2.0
        gray = d.image[..., 0].astype(int)
        assert gray[:, :20].mean() > 180 and gray[:, 30:].mean() < 60


def test_resume_refuses_other_input_recursive_or_save(tmp_path: Path, model: Path, stub_sidecars: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    inp, other = tmp_path / "in", tmp_path / "other"
    png(inp / "a.png", part(False))
    png(other / "a.png", part(True))
    out = tmp_path / "out"
    base = ["--engine", str(model), "--output", str(out), "--quiet"]
    assert ri.main(base + ["--input", str(inp), "--save", "mask,overlay"]) == 0
    capsys.readouterr()
    for changed, name in ((["--input", str(other), "--save", "mask,overlay"], "--input"),
                          (["--input", str(inp), "--save", "mask,overlay", "--recursive"], "--recursive"),
                          (["--input", str(inp), "--save", "mask"], "--save"),
                          (["--input", str(inp), "--save", "mask,overlay", "--format", "png"], "--format"),
                          (["--input", str(other), "--save", "mask"], "--input, --save")):
        assert ri.main(base + changed + ["--resume"]) == 2, name
        err = capsys.readouterr().err
        verb = "differ" if ", " in name else "differs"
        assert err.startswith("error: --resume: ") and f"whose {name} {verb} from this run's;" in err, err
    # the same settings, the input given by another path, and the save kinds in another order
    monkeypatch.chdir(tmp_path)
    assert ri.main(base + ["--input", "in", "--save", "overlay,mask", "--resume"]) == 0
    assert len(rows(out)) == 1


def test_inference_failure_is_one_line_error(tmp_path: Path, model: Path, stub_sidecars: None,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """ONNX Runtime's own exceptions (InvalidArgument, Fail...) are not RuntimeErrors: the backend
    turns them into BackendError, so the command ends with one `error:` line and exit 1."""
    import onnxruntime as ort

    inp = tmp_path / "in"
    png(inp / "a.png", part(False))
    real = ort.InferenceSession.run
    calls = {"n": 0}

    def failing(self: ort.InferenceSession, names: object, feed: dict[str, np.ndarray], *a: object) -> object:
        calls["n"] += 1
        if calls["n"] > 1:  # after the warm-up: a real ORT error (InvalidArgument: wrong input type)
            feed = {k: v.astype(np.float32) for k, v in feed.items()}
        return real(self, names, feed, *a)

    monkeypatch.setattr(ort.InferenceSession, "run", failing)
    out = tmp_path / "out"
    assert ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("thresholds: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}: inference failed (InvalidArgument: "), err
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_names_that_are_not_utf8_or_hold_line_separators(tmp_path: Path, model: Path, stub_sidecars: None,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A Latin-1 name (copied from an old Windows share) used to stop the run before any row was
    written; a name with U+2028 was re-inspected on every --resume."""
    inp = tmp_path / "in"
    png(inp / "a.png", part(False))
    ok, buf = cv2.imencode(".png", part(True))
    with open(os.path.join(os.fsencode(inp), b"caf\xe9.png"), "wb") as f:  # not UTF-8
        f.write(buf.tobytes())
    png(inp / "line\u2028sep.png", part(False))
    png(inp / "caf\\xe9.png", part(False))  # literally a backslash: must not share the escaped name's key
    out = tmp_path / "out"
    args = ["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet", "--save", "overlay"]
    assert ri.main(args) == 0
    by = {r["file"]: r for r in rows(out)}
    assert set(by) == {"a.png", "caf\\xe9.png", "line\u2028sep.png", "caf\\\\xe9.png"}
    assert by["caf\\\\xe9.png"]["verdict"] == "OK" and (out / "overlay" / "caf\\\\xe9.jpg").exists()
    assert by["caf\\xe9.png"]["verdict"] == "NG" and (out / "overlay" / "caf\\xe9.jpg").exists()
    assert "caf\\xe9.png" in (out / "report.csv").read_text(encoding="utf-8")
    capsys.readouterr()
    assert ri.main(args + ["--resume"]) == 0
    assert "4 inputs already in the report, 0 to go" in capsys.readouterr().err and len(rows(out)) == 4
    # a folder and an output whose own names are not UTF-8 (the summary's header)
    weird = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"lot\xe9")))
    png(weird / "a.png", part(False))
    assert ri.main(["--engine", str(model), "--input", str(weird), "--output", str(weird.with_name(weird.name + "_out")),
                    "--quiet"]) == 0
    assert json.loads((weird.with_name(weird.name + "_out") / "summary.json").read_text())["input"].endswith("lot\\xe9")


def test_non_finite_thresholds_are_refused(tmp_path: Path, stub_sidecars: None, capsys: pytest.CaptureFixture) -> None:
    inp = tmp_path / "in"
    png(inp / "a.png", part(True))
    m = make_stub_model(tmp_path / "m", thresholds={})
    for flag in ("--threshold-image", "--threshold-pixel"):
        for value in ("nan", "inf"):
            assert ri.main(["--engine", str(m), "--input", str(inp), "--output", str(tmp_path / "o"), flag, value]) == 2
    assert "is not a finite number" in capsys.readouterr().err
    bad = make_stub_model(tmp_path / "bad", thresholds={"pixel": 0.5, "image": float("nan")})
    assert ri.main(["--engine", str(bad), "--input", str(inp), "--output", str(tmp_path / "o2"), "--quiet"]) == 1
    assert "image threshold nan is not a finite number" in capsys.readouterr().err


def test_resume_drops_failures_of_inputs_that_are_gone(tmp_path: Path, model: Path, stub_sidecars: None) -> None:
    inp = tmp_path / "in"
    png(inp / "a.png", part(False))
    (inp / "broken.png").write_bytes(b"")
    png(inp / "b.png", part(True))
    out = tmp_path / "out"
    args = ["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet"]
    assert ri.main(args) == 0 and {r["file"]: r["processing"] for r in rows(out)}["broken.png"] == "failed"
    (inp / "broken.png").unlink()  # the bad file was removed: its failure row goes
    (inp / "b.png").unlink()       # an inspected image moved away: its result stays
    png(inp / "c.png", part(False))
    assert ri.main(args + ["--resume"]) == 0
    assert [r["file"] for r in rows(out)] == ["a.png", "c.png", "b.png"]


def test_a_folder_that_cannot_be_stat_ed_gets_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png(tmp_path / "top" / "batch2" / "x.png", part(False))
    png(tmp_path / "top" / "y.png", part(False))
    real = os.stat

    def stat(p: object, *a: object, **k: object) -> os.stat_result:
        if str(p).endswith("batch2"):
            raise PermissionError(13, "Permission denied", str(p))
        return real(p, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(discover_mod.os, "stat", stat)
    found = {e.rel: e.error for e in ri.discover(tmp_path / "top", recursive=True)}
    assert found == {"batch2": "cannot access (Permission denied)", "y.png": None}
    assert {e.rel for e in ri.discover(tmp_path / "top")} == {"y.png"}  # not recursive: the folder is not an input


def test_failure_kind_removes_the_rows_own_name() -> None:
    assert reports.failure_kind("lot 7: part 3.png: empty file (0 bytes)", "lot 7: part 3.png") == "empty file"
    assert reports.failure_kind("symlink loop: a link back to a folder above it", "sub") == \
        "symlink loop: a link back to a folder above it"


def test_overlay_color_scale_comes_from_the_threshold_or_the_model() -> None:
    """The map that decides: 0 .. 2 x pixel threshold once calibrated, else 0 .. 2 x its normal p99
    from the model; the attention: 0 .. 2 x its normal p99; per image only when neither is known."""
    from types import SimpleNamespace

    from runtime.pipeline import Pipeline
    from runtime.postprocess import Thresholds

    def pipe(sidecar: dict | None, backend: object, th: Thresholds) -> Pipeline:
        model = SimpleNamespace(sidecar=sidecar, backend=backend, output_names=("attention", "anomaly_map"),
                                path=Path("m.onnx"))
        return Pipeline(model, th)  # type: ignore[arg-type]

    onnx = SimpleNamespace()  # ONNX Runtime's backend: no export settings of its own
    th = Thresholds(0.2, 0.3)
    fitted = pipe({"model": {"attention_scale": 0.05, "anomaly_scale": 0.07}}, onnx, th)
    assert fitted.layers["attention"].range == (0.0, 0.1)
    assert fitted.layers["anomaly_map"].range == (0.0, 0.4)  # the calibrated threshold mid-colormap
    uncalibrated = pipe({"model": {"attention_scale": 0.05, "anomaly_scale": 0.07}}, onnx, Thresholds())
    assert uncalibrated.layers["anomaly_map"].range == (0.0, 0.14)  # its normal p99 mid-colormap
    older = pipe({"model": {}}, onnx, Thresholds())
    assert older.layers["attention"].range is None and older.layers["anomaly_map"].range is None
    assert "(per image)" in older.legend("attention")
    checkpoint = pipe(None, SimpleNamespace(settings={"attention_scale": 0.5}), th)
    assert checkpoint.layers["attention"].range == (0.0, 1.0)  # a .pt opened directly


def test_a_folder_holding_a_report_needs_resume_or_overwrite(tmp_path: Path, model: Path, stub_sidecars: None,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A second run into the same folder used to replace the report and leave the first run's
    pictures (NG overlays of another threshold) beside it."""
    inp = tmp_path / "in"
    png(inp / "a.png", part(True))
    out = tmp_path / "out"
    base = ["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet"]
    assert ri.main(base + ["--save", "overlay,mask"]) == 0
    (out / "notes.txt").write_text("the inspector's own file")
    capsys.readouterr()
    assert ri.main(base) == 2
    assert "holds a previous report: --resume continues it, --overwrite replaces it" in capsys.readouterr().err
    assert ri.main(base + ["--resume", "--overwrite"]) == 2
    assert ri.main(["--engine", str(model), "--input", str(out / "overlay"), "--output", str(out), "--quiet",
                    "--overwrite"]) == 2  # it would delete its own input
    assert "would delete the input" in capsys.readouterr().err
    assert (out / "overlay" / "a.jpg").exists()
    assert ri.main(base + ["--overwrite"]) == 0
    assert not (out / "overlay").exists() and not (out / "mask").exists() and len(rows(out)) == 1
    assert (out / "notes.txt").read_text() == "the inspector's own file"
    # a fatal error (a model replaced behind its sidecar's back) keeps the old report
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(model, stale / model.name)
    shutil.copy(model.with_suffix(".yaml"), stale / model.with_suffix(".yaml").name)
    with open(stale / model.name, "ab") as f:
        f.write(b"\0")
    assert ri.main(["--engine", str(stale / model.name), "--input", str(inp), "--output", str(out),
                    "--overwrite"]) == 1
    assert len(rows(out)) == 1


def test_a_full_output_disk_stops_the_run_and_resume_writes_what_is_missing(
        tmp_path: Path, model: Path, stub_sidecars: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """ENOSPC used to become one error row per later image, the run 'complete', and --resume
    skipped them all: the pictures were never written."""
    import errno as _errno

    inp = tmp_path / "in"
    for i in range(6):
        png(inp / f"{i}.png", part(i % 2 == 1))
    out = tmp_path / "out"
    args = ["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet", "--save", "overlay",
            "--batch", "2", "--workers", "1"]
    real, calls = batch.save_image, []

    def full(path: Path, image: np.ndarray) -> None:
        calls.append(path)
        if len(calls) > 2:
            raise OSError(_errno.ENOSPC, "No space left on device", str(path))
        real(path, image)

    monkeypatch.setattr(batch, "save_image", full)
    assert ri.main(args) == 1
    err = capsys.readouterr().err
    assert "No space left on device: free space on the output (or make it writable), then rerun with --resume" in err
    done = rows(out)
    assert all(r["processing"] == "done" for r in done) and len(done) < 6
    monkeypatch.setattr(batch, "save_image", real)  # space freed
    assert ri.main(args + ["--resume"]) == 0
    assert len(rows(out)) == 6 and len(list((out / "overlay").glob("*.jpg"))) == 6


def test_a_fatal_backend_error_keeps_the_rows_already_finished(tmp_path: Path, model: Path, stub_sidecars: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.backends import BackendError
    from runtime.model import Model

    inp = tmp_path / "in"
    for i in range(6):
        png(inp / f"{i}.png", part(False))
    real, calls = Model.__call__, []

    def failing(self: Model, images: np.ndarray, outputs: object = None) -> dict:
        calls.append(len(images))
        if len(calls) == 3:  # warm-up, first batch, then the second batch fails
            raise BackendError("stub.onnx: inference failed (out of memory)")
        return real(self, images, outputs)

    monkeypatch.setattr(Model, "__call__", failing)
    out = tmp_path / "out"
    assert ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet", "--batch", "2",
                    "--workers", "1"]) == 1
    assert [r["file"] for r in rows(out)] == ["0.png", "1.png"]
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_post_processing_out_of_memory_is_that_images_row(tmp_path: Path, model: Path, stub_sidecars: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "in"
    png(inp / "a.png", part(False))
    png(inp / "b.png", part(True))
    import runtime.pipeline as rp

    real = rp.inspect_map

    def oom(m: np.ndarray, *a: object, **k: object) -> object:
        if float(np.max(m)) > 0.9:  # the bright defect image
            raise MemoryError
        return real(m, *a, **k)

    monkeypatch.setattr(rp, "inspect_map", oom)
    out = tmp_path / "out"
    assert ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet"]) == 0
    by = {r["file"]: r for r in rows(out)}
    assert by["a.png"]["processing"] == "done" and by["b.png"]["reason"] == "b.png: out of memory in post-processing"


def test_decoded_pixels_are_freed_when_no_overlay_needs_them(tmp_path: Path, model: Path, stub_sidecars: None) -> None:
    from runtime.pipeline import Pipeline

    png(tmp_path / "a.png", part(False, size=300))
    with Pipeline.open(model) as pipe:
        for save, kept in ((("mask",), False), (("overlay",), True)):
            s = batch.Settings(tmp_path / "out", save, ri.DEFAULT_MAX_PIXELS)
            job = batch.prepare_job(ri.Entry("a.png", tmp_path / "a.png"), pipe, s)
            assert (job.prepared.image is not None) == kept  # only the overlay holds the 300x300 pixels
            assert job.prepared.size == (300, 300) and job.prepared.input.shape[:2] == (16, 16)


def test_sigterm_takes_the_interrupt_path_and_the_handler_is_restored(tmp_path: Path, model: Path,
                                                                      stub_sidecars: None) -> None:
    import signal

    with pytest.raises(KeyboardInterrupt):
        cli._interrupt(signal.SIGTERM, None)
    before = signal.getsignal(signal.SIGTERM)
    png(tmp_path / "in" / "a.png", part(False))
    assert ri.main(["--engine", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                    "--quiet"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_error_text_escapes_a_name_once(tmp_path: Path, model: Path, stub_sidecars: None) -> None:
    """report_name doubles backslashes in names (keys stay unique); an error message that already
    holds the escaped name must not double them a second time."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a\\b.png").write_bytes(b"")
    out = tmp_path / "out"
    assert ri.main(["--engine", str(model), "--input", str(inp), "--output", str(out), "--quiet"]) == 0
    (row,) = rows(out)
    assert row["file"] == "a\\\\b.png" and row["reason"] == "a\\\\b.png: empty file (0 bytes)"


def test_picture_names_never_collide_not_even_across_a_resume(tmp_path: Path, model: Path,
                                                               stub_sidecars: None) -> None:
    """Dropping the extension is undone for inputs that would share a picture name; it used to
    compare only the shortened names, so a.png (kept whole: a.jpg is beside it) and a.png.jpg
    (shortened to a.png) both drew overlay/.../a.png.jpg, one over the other. On --resume the
    pictures of rows already in the report keep their names: a new input never takes one."""
    stems = reports.picture_stems(["s/a.jpg", "s/a.png", "s/a.png.jpg", "s/b.png"])
    assert len(set(stems.values())) == 4 and stems["s/b.png"] == "s/b"
    assert stems["s/a.png"] == "s/a.png" and stems["s/a.png.jpg"] == "s/a.png.jpg"
    # a resumed report's row owns its picture name; an input added since cannot take it
    again = reports.picture_stems(["s/a.jpg", "s/a.jpg.png", "s/a.png"], reserved={"s/a.jpg.png": "s/a.jpg"})
    assert again["s/a.jpg.png"] == "s/a.jpg" and len(set(again.values())) == 3

    inp, out = tmp_path / "in", tmp_path / "out"
    png(inp / "s" / "a.jpg.png", part(True))
    args = ["--engine", str(model), "--input", str(inp), "--output", str(out), "--recursive", "--save", "overlay",
            "--quiet", "--format", "png"]
    assert ri.main(args) == 0
    [first] = rows(out)
    picture = out / first["pictures"]["overlay"]
    before = picture.read_bytes()
    png(inp / "s" / "a.jpg", part(False))  # added before the run is resumed (and a.png: a.jpg keeps its extension)
    png(inp / "s" / "a.png", part(False))
    assert ri.main(args + ["--resume"]) == 0
    got = {r["file"]: r["pictures"]["overlay"] for r in rows(out)}
    assert len(got) == 3 and len(set(got.values())) == 3, got
    assert got["s/a.jpg.png"] == first["pictures"]["overlay"] and picture.read_bytes() == before  # still its own


def test_the_registration_centre_is_in_source_pixels_like_the_boxes() -> None:
    """A huge file is decoded reduced (decode_scale 2): boxes and area are scaled back to the
    file's pixels, but the row's registration centre was left in decoded pixels, half the value
    of the boxes' frame. Everything a row locates is in the file's own pixels."""
    from core.prepare import Prepared
    from core.registration import Registration

    reg = Registration("ok", np.eye(2, 3), (500, 400), centre=(120.0, 210.5), angle=30.0)
    p = Prepared(np.zeros((16, 16, 1), np.uint8), reg, (500, 400), (1000, 800), 2.0)
    row = batch.registration_row(p)
    assert row["centre"] == [240.0, 421.0] and row["angle"] == 30.0 and "matrix" not in row
    p1 = Prepared(np.zeros((16, 16, 1), np.uint8), reg, (500, 400), (500, 400), 1.0)
    assert batch.registration_row(p1)["centre"] == [120.0, 210.5]
