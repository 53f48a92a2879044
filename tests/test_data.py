"""Data loaders on the shared real data and on bad input."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import MNIST, SCREW, UCSD
from training.data import AugmentedImages, load_split
from core.images import ImageError, read_image


@pytest.mark.skipif(not SCREW.exists(), reason="shared screw data absent")
def test_reads_shared_screw_layout():
    cfg = {"format": "mvtec", "root": str(SCREW)}
    test = load_split(cfg, "test", 64, 1, strict=False)
    assert test.images.shape[1:] == (64, 64, 1) and test.images.dtype == np.uint8
    assert test.masks is not None and test.masks.shape == (len(test), 64, 64)
    assert set(test.kinds) >= {"good", "scratch_head", "thread_top"}
    # every defect image has some mask pixels, no good image has any
    bad = test.labels == 1
    assert test.masks[bad].reshape(bad.sum(), -1).any(1).all()
    assert not test.masks[~bad].any()
    assert not test.skipped


@pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST absent")
def test_mnist_one_class_split():
    cfg = {"format": "mnist", "root": str(MNIST), "normal_digit": 1, "max_test": 300}
    train = load_split(cfg, "train", 28, 1, strict=True)
    test = load_split(cfg, "test", 28, 1, strict=True)
    assert set(train.kinds) == {"1"} and train.labels.sum() == 0
    assert len(test) == 300 and len(set(test.kinds)) == 10
    assert not set(train.names) & set(test.names)


@pytest.mark.skipif(not UCSD.exists(), reason="shared UCSD absent")
def test_ucsd_frames_and_masks():
    test = load_split({"format": "ucsd", "root": str(UCSD)}, "test", 100, 1, strict=False)
    assert len(test) == 100 and test.masks is not None
    assert test.labels[:60].sum() == 0 and test.labels[60:].all()  # anomaly from frame 61


def test_augmentation_is_seeded_and_deterministic(mvtec_dir: Path):
    train = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "train", 32, 1, strict=True)
    a = AugmentedImages(train.images, 30, True, True, seed=3)
    b = AugmentedImages(train.images, 30, True, True, seed=3)
    assert all(np.array_equal(a[i].numpy(), b[i].numpy()) for i in range(4))
    first = a[0].numpy().copy()
    a.set_epoch(1)
    assert not np.array_equal(first, a[0].numpy())  # a new epoch draws new transforms


def test_empty_folder_is_a_clear_error(tmp_path: Path):
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(ImageError, match="no images"):
        load_split({"format": "mvtec", "root": str(tmp_path)}, "train", 32, 1, strict=True)
    with pytest.raises(ImageError, match="no images"):
        load_split({"format": "folder", "root": str(tmp_path / "train" / "good")}, "train", 32, 1, strict=True)


@pytest.mark.parametrize("content", [b"", b"not a png at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_corrupt_image_names_the_file_in_training(mvtec_dir: Path, content: bytes):
    bad = mvtec_dir / "train" / "good" / "zz_bad.png"
    bad.write_bytes(content)
    with pytest.raises(ImageError, match="zz_bad.png"):
        load_split({"format": "mvtec", "root": str(mvtec_dir)}, "train", 32, 1, strict=True)


def test_corrupt_image_is_skipped_in_evaluation(mvtec_dir: Path):
    (mvtec_dir / "test" / "good" / "zz_bad.png").write_bytes(b"")
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=False)
    assert len(split) == 6
    assert split.skipped and "zz_bad.png" in split.skipped[0][0] and "empty" in split.skipped[0][1]


def test_mixed_sizes_or_channels_name_the_file(mvtec_dir: Path):
    cv2.imwrite(str(mvtec_dir / "train" / "good" / "zz_big.png"), np.zeros((80, 80), np.uint8))
    with pytest.raises(ImageError, match="zz_big.png"):
        load_split({"format": "mvtec", "root": str(mvtec_dir)}, "train", 32, 1, strict=True)
    (mvtec_dir / "train" / "good" / "zz_big.png").unlink()
    cv2.imwrite(str(mvtec_dir / "train" / "good" / "zz_rgb.png"), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ImageError, match="zz_rgb.png"):
        load_split({"format": "mvtec", "root": str(mvtec_dir)}, "train", 32, 1, strict=True)


def test_evaluation_skips_the_odd_size_out_even_when_it_comes_first(mvtec_dir: Path):
    cv2.imwrite(str(mvtec_dir / "test" / "good" / "000_aa_big.png"), np.zeros((80, 80), np.uint8))
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=False)
    assert len(split) == 6 and [Path(f).name for f, _ in split.skipped] == ["000_aa_big.png"]
    assert "differ from the split's" in split.skipped[0][1]


def test_ucsd_test_sequence_without_masks_is_reported_not_counted_normal(tmp_path: Path):
    for seq, gt in (("Test001", True), ("Test002", False)):
        (tmp_path / "Test" / seq).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "Test" / seq / f"{i:03d}.tif"), np.full((20, 20), 100, np.uint8))
        if gt:
            (tmp_path / "Test" / f"{seq}_gt").mkdir()
            for i in range(2):
                cv2.imwrite(str(tmp_path / "Test" / f"{seq}_gt" / f"{i:03d}.bmp"), np.zeros((20, 20), np.uint8))
    cfg = {"format": "ucsd", "root": str(tmp_path)}
    split = load_split(cfg, "test", 16, 1, strict=False)
    assert split.names == ["Test001/000.tif", "Test001/001.tif"]
    assert split.skipped == [(str(tmp_path / "Test" / "Test002"), "no ground truth folder Test002_gt")]
    with pytest.raises(ImageError, match="Test002.*no ground truth"):
        load_split(cfg, "test", 16, 1, strict=True)


@pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST absent")
def test_mnist_refuses_color_or_another_size():
    cfg = {"format": "mnist", "root": str(MNIST)}
    for size, channels in ((28, 3), (32, 1)):
        with pytest.raises(ValueError, match="28x28 grayscale"):
            load_split(cfg, "train", size, channels, strict=True)


def test_defect_without_mask(mvtec_dir: Path):
    (mvtec_dir / "ground_truth" / "crack" / "001_mask.png").unlink()
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=False)
    assert len(split) == 5 and "no mask" in split.skipped[0][1]
    with pytest.raises(ImageError, match="001.png.*no mask"):
        load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=True)


def test_read_image_channel_conversions(tmp_path: Path):
    p16 = tmp_path / "deep.png"
    cv2.imwrite(str(p16), np.full((8, 8), 65535, np.uint16))
    assert read_image(p16, 1).max() == 255 and read_image(p16, 1).dtype == np.uint8
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.full((8, 8, 4), 100, np.uint8))
    assert read_image(rgba, 3).shape == (8, 8, 3) and read_image(rgba, 1).shape == (8, 8, 1)
    uni = tmp_path / "ünï cödé name.png"
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "x.png").rename(uni)
    assert read_image(uni, 3).shape == (8, 8, 3)


def _huge_header_png(path: Path) -> None:
    """A valid 2x2 PNG whose IHDR claims 100000x100000 pixels: OpenCV raises instead of returning None."""
    import struct
    import zlib

    ok, buf = cv2.imencode(".png", np.zeros((2, 2), np.uint8))
    data = bytearray(buf.tobytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 100000, 100000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def test_a_header_opencv_refuses_is_named_in_training_and_skipped_in_evaluation(mvtec_dir: Path):
    _huge_header_png(mvtec_dir / "train" / "good" / "zz_huge.png")
    with pytest.raises(ImageError, match="zz_huge.png: OpenCV refuses"):
        load_split({"format": "mvtec", "root": str(mvtec_dir)}, "train", 32, 1, strict=True)
    _huge_header_png(mvtec_dir / "test" / "good" / "zz_huge.png")
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=False)
    assert len(split) == 6 and [Path(f).name for f, _ in split.skipped] == ["zz_huge.png"]


def test_training_reads_train_good_only_and_reports_other_folders(mvtec_dir: Path):
    (mvtec_dir / "train" / "crack").mkdir()
    cv2.imwrite(str(mvtec_dir / "train" / "crack" / "000.png"), np.zeros((64, 64), np.uint8))
    (mvtec_dir / "train" / ".ipynb_checkpoints").mkdir()
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "train", 32, 1, strict=True)
    assert len(split) == 16 and set(split.kinds) == {"good"} and not split.labels.any()
    assert split.skipped == [(str(mvtec_dir / "train" / "crack"), "folder ignored: training reads train/good only")]


def test_a_mask_of_another_size_is_not_stretched(mvtec_dir: Path):
    cv2.imwrite(str(mvtec_dir / "ground_truth" / "crack" / "001_mask.png"), np.zeros((64, 32), np.uint8))
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=False)
    assert "crack/001.png" not in split.names and len(split) == 5
    assert "its mask" in split.skipped[0][1] and "32x64, the image 64x64" in split.skipped[0][1]


def test_a_broken_mask_is_reported_as_the_mask(mvtec_dir: Path):
    mask = mvtec_dir / "ground_truth" / "crack" / "001_mask.png"
    mask.write_bytes(b"")
    split = load_split({"format": "mvtec", "root": str(mvtec_dir)}, "test", 32, 1, strict=False)
    assert split.skipped[0][1] == f"its mask {mask}: empty file (0 bytes)"


def test_config_without_data_root_is_one_clear_error():
    with pytest.raises(ValueError, match="data.root is not set"):
        load_split({"format": "mvtec"}, "train", 32, 1, strict=True)


def test_a_relative_data_root_that_is_missing_says_where_it_was_looked_for(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"relative to the current folder .*run from the repository root or pass --data"):
        load_split({"format": "mvtec", "root": "../shared/data/nowhere"}, "train", 32, 1, strict=True)


def test_ucsd_test_split_without_any_ground_truth_is_not_all_normal(tmp_path: Path):
    (tmp_path / "Test" / "Test001").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "Test" / "Test001" / "000.tif"), np.full((20, 20), 100, np.uint8))
    cfg = {"format": "ucsd", "root": str(tmp_path)}
    with pytest.raises(ImageError, match="Test001: no ground truth folder Test001_gt"):
        load_split(cfg, "test", 16, 1, strict=True)
    with pytest.raises(ImageError, match="no frames found in a sequence with a ground-truth folder"):
        load_split(cfg, "test", 16, 1, strict=False)
    with pytest.raises(ImageError, match="no sequence folder Tset002"):
        load_split({**cfg, "sequences": ["Test001", "Tset002"]}, "test", 16, 1, strict=False)


def test_mnist_idx_files_that_are_wrong_name_the_file(tmp_path: Path):
    import gzip

    from training.data.mnist import read_idx

    good = b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(2 * 28 * 28)
    cases = {"truncated.gz": (gzip.compress(good[:-10]), "data bytes for dims"),
             "int32.gz": (gzip.compress(b"\x00\x00\x0c" + good[3:]), "not an idx file of unsigned bytes"),
             "plain.gz": (good, "not a readable gzip file")}
    for name, (content, why) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: .*{why}"):
            read_idx(tmp_path / name)
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    assert read_idx(tmp_path / "ok.gz").shape == (2, 28, 28)
