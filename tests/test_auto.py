"""training.auto, the automatic set-up behind `training.retrain --config auto`: the survey, the
registrations that apply, the written rule, and a whole set-up from a folder to a deployed version."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from core.synthetic import make_parts
from training import auto
from training.retrain import main


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("auto") / "data"
    make_parts(root, n_train=20, n_good=6, n_defect=6, size=128)
    return root


def test_the_survey_sees_gray_elongated_parts_and_offers_their_registrations(parts: Path) -> None:
    s = auto.survey(parts)
    assert s.images == 20 and (s.height, s.width) == (128, 128) and not s.colour and s.channels == 1
    assert s.parts == 1.0 and s.elongation > 2
    assert [auto.setting_name("template", 128, r) for r in auto.registrations(s)] == [
        "template-128-rotation+light", "template-128-principal_axis+light", "template-128-shift+light",
        "template-128-none+light"]
    assert auto.other_lighting(auto.registrations(s)[0]) == {"method": "rotation", "lighting": "none"}
    reg = auto.registrations(s)[0]
    tolerant = {name: auto.plan_row(name, 128, reg, s, {"root": str(parts)}, auto.TOLERANCE) for name in auto.FAMILIES}
    assert tolerant["template"].name == "template-128-rotation+light+tol1" and tolerant["template"].tolerance == 1
    assert tolerant["discriminative"].config["model"]["tolerance"] == 1    # compares with references: takes it
    assert tolerant["vae"].name == "vae-128-rotation+light" and "tolerance" not in tolerant["vae"].config["model"]


def test_the_survey_of_round_colour_parts_and_of_pictures_without_a_part(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "round").mkdir()
    (tmp_path / "texture").mkdir()
    for i in range(12):
        img = np.full((96, 96, 3), (20, 20, 20), np.uint8)
        cv2.circle(img, (48 + i % 3, 48), 30, (40, 160, 90), -1)
        cv2.imwrite(str(tmp_path / "round" / f"{i}.png"), img)
        cv2.imwrite(str(tmp_path / "texture" / f"{i}.png"), rng.integers(90, 110, (96, 96, 3)).astype(np.uint8))
    s = auto.survey(tmp_path / "round")
    assert s.colour and s.parts == 1.0 and s.elongation < 1.5
    assert [r["method"] for r in auto.registrations(s)] == ["rotation", "shift", "none"]
    s = auto.survey(tmp_path / "texture")
    assert s.parts == 0 and [r["method"] for r in auto.registrations(s)] == ["shift", "none"]
    assert all(r["lighting"] == "none" for r in auto.registrations(s))


def test_the_rule_picks_image_auroc_then_aupro_then_recall_then_minutes() -> None:
    def row(name: str, auroc: float, aupro: float, recall: float, minutes: float) -> auto.Row:
        return auto.Row(name, "template", 128, {}, 0, {}, "built", minutes, auroc, aupro, recall)
    rows = [row("a", 0.950, 0.99, 0.9, 1), row("b", 0.960, 0.80, 0.5, 1), row("c", 0.957, 0.90, 0.7, 9),
            row("d", 0.957, 0.90, 0.7, 2), auto.Row("e", "vae", 128, {}, 0, {}, "skipped")]
    assert auto.choose(rows).name == "d"            # within 0.005 of b: AUPRO, recall tie, fewer minutes
    rows[1].image_auroc = 0.99
    assert auto.choose(rows).name == "b"
    with pytest.raises(Exception, match="no candidate"):
        auto.choose([rows[-1]])


def test_later_candidates_build_on_the_fewest_options_within_one_standard_error() -> None:
    def row(name: str, lighting: str, auroc: float, tolerance: int = 0, n: tuple[int, int] = (33, 11)) -> auto.Row:
        return auto.Row(name, "template", 128, {"method": "rotation", "lighting": lighting}, 0, {}, "built", 0.1,
                        auroc, 0.5, 0.5, tolerance=tolerance, positives=n[0], negatives=n[1])
    # metal_nut without labels: lighting 0.760 against 0.753 on 11 good parts is luck (one SE ~0.08)
    rows = [row("light", "background", 0.760), row("plain", "none", 0.753), row("tol", "none", 0.758, 1)]
    assert auto.choose(rows).name == "light" and auto.settle(rows).name == "plain"
    # the screws: lighting 0.966 against 0.848 on 82 labelled parts is not
    rows = [row("light", "background", 0.966, n=(61, 21)), row("plain", "none", 0.848, n=(61, 21))]
    assert auto.settle(rows).name == "light"
    # many parts make a small difference count: the option is kept
    rows = [row("light", "background", 0.780, n=(3000, 3000)), row("plain", "none", 0.753, n=(3000, 3000))]
    assert auto.settle(rows).name == "light"
    assert [r.options() for r in (row("a", "background", 0.5, 1), row("b", "none", 0.5))] == [2, 0]


def test_a_family_variant_is_a_row_of_its_own_built_from_the_model_it_exports_again() -> None:
    from families import FAMILIES

    s = auto.Survey(40, 96, 96, False, 1.0, 3.0)
    row = auto.plan_row("discriminative", 128, {"method": "rotation", "lighting": "background"}, s, {"root": "d"})
    row.model = "setup/discriminative-128-rotation+light/deploy.onnx"
    assert list(FAMILIES["discriminative"].variants) == ["blend"]
    v = auto.variant_row(row, "blend")
    assert v.name == "discriminative-128-rotation+light+blend" and v.source == row.model and v.variant == "blend"
    assert v.config["model"]["blend"] is True and row.config["model"]["blend"] is False    # a copy, not the row's
    assert v.estimate_min < 1 < row.estimate_min         # an export and a score, no training


def test_auto_builds_scores_chooses_and_deploys(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deploy = tmp_path / "deploy"
    assert main(["--config", "auto", "--data", str(parts), "--deploy", str(deploy), "--budget", "3"]) == 0
    out = capsys.readouterr().out
    assert "== setup: what was tried" in out and "skipped" in out     # the trained families do not fit 3 min
    version = deploy / "v0001"
    setup = json.loads((version / "setup.json").read_text())
    winner = [r for r in setup["rows"] if r["name"] == setup["winner"]][0]
    assert winner["status"] == "built" and winner["image_auroc"] > 0.9
    assert winner["registration"]["method"] in ("rotation", "principal_axis")   # the parts lie at any angle
    assert {r["name"]: r["status"] for r in setup["rows"]}["template-128-none+light"] == "built"
    assert [r["status"] for r in setup["rows"] if r["name"].endswith("+tol1")] == ["built"]
    cfg = yaml.safe_load((version / "train.yaml").read_text())
    assert cfg["model"]["family"] == "template" and cfg["registration"] == winner["registration"]
    side = yaml.safe_load((version / "deploy.yaml").read_text())
    assert side["thresholds"] and side["registration"]["method"] == winner["registration"]["method"]
    assert not (version / "setup").exists()


def test_auto_on_good_parts_alone_scores_synthetic_defects(parts: Path, tmp_path: Path) -> None:
    heldout = tmp_path / "heldout"
    shutil.copytree(parts / "test" / "good", heldout)
    assert main(["--config", "auto", "--data", str(parts), "--heldout", str(heldout), "--deploy",
                 str(tmp_path / "deploy"), "--budget", "2"]) == 0
    setup = json.loads((tmp_path / "deploy" / "v0001" / "setup.json").read_text())
    assert "synthetic defects" in setup["rule"]


def test_a_folder_of_good_images_alone_holds_out_every_fifth_to_score_and_calibrate_on(
        parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "photos"
    shutil.copytree(parts / "train" / "good", good)          # 20 good images, no test/ beside them
    deploy = tmp_path / "deploy"
    assert main(["--config", "auto", "--data", str(good), "--deploy", str(deploy), "--budget", "2"]) == 0
    assert "4 of the good images are held out" in capsys.readouterr().out
    train, held = sorted((deploy / "split" / "train").iterdir()), sorted((deploy / "split" / "heldout" / "good").iterdir())
    assert (len(train), len(held)) == (16, 4) and not {p.name for p in train} & {p.name for p in held}
    assert held[0].name == sorted(good.iterdir())[0].name and held[-1].name == sorted(good.iterdir())[-1].name
    setup = json.loads((deploy / "v0001" / "setup.json").read_text())
    assert "synthetic defects" in setup["rule"] and setup["survey"]["images"] == 16
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(good.iterdir())[:12]:
        shutil.copy(p, few / p.name)
    assert main(["--config", "auto", "--data", str(few), "--deploy", str(tmp_path / "d2"), "--budget", "2"]) == 2
    assert "12 good images and no --heldout" in capsys.readouterr().err
    assert not (tmp_path / "d2").exists()


def test_budget_belongs_to_auto(parts: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {arch: template, size: 64}\n")
    assert main(["--config", str(cfg), "--data", str(parts), "--deploy", str(tmp_path / "d"), "--budget", "5"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--config", "auto", "--data", str(parts), "--deploy", str(tmp_path / "d"), "--budget", "-1"])
    assert e.value.code == 2


def test_a_budget_too_small_for_any_candidate_says_what_to_give(parts: Path, tmp_path: Path, capsys) -> None:
    deploy = tmp_path / "d"
    assert main(["--config", "auto", "--data", str(parts), "--deploy", str(deploy), "--budget", "0.5"]) == 1
    err = capsys.readouterr()
    assert "--budget 0.5 min is too small" in err.out + err.err and "give --budget" in err.out + err.err
    assert not (deploy / "current").exists()


def write_part(root: Path, make: Callable[..., np.ndarray], good: list[dict], defects: dict[str, list[dict]],
               train: list[dict]) -> Path:
    """An MVTec-layout folder: make(**kwargs) draws each picture; a defect's mask is where it
    differs from the same part drawn without the defect (kwargs 'spot' marks a dark spot)."""
    def draw(kw: dict) -> tuple[np.ndarray, np.ndarray]:
        spot = kw.pop("spot", None)
        img = make(**kw)
        mask = np.zeros(img.shape[:2], np.uint8)
        if spot is not None:
            cv2.circle(mask, spot, max(2, img.shape[0] // 24), 255, -1)
            img[mask > 0] = 5
        return img, mask

    for folder, items in (("train/good", train), ("test/good", good), *((f"test/{k}", v) for k, v in defects.items())):
        (root / folder).mkdir(parents=True)
        for i, kw in enumerate(items):
            img, mask = draw(dict(kw))
            cv2.imwrite(str(root / folder / f"{i:03d}.png"), img)
            if folder.startswith("test/") and folder != "test/good":
                gt = root / "ground_truth" / folder[5:]
                gt.mkdir(parents=True, exist_ok=True)
                if not mask.any():  # flipped, moved or missing: where it differs from the part in place
                    plain = make(**{k: v for k, v in kw.items() if k not in ("mirror", "shift", "missing", "turn")})
                    mask = np.where(np.abs(img.astype(int) - plain).max(-1) > 30, 255, 0).astype(np.uint8)
                cv2.imwrite(str(gt / f"{i:03d}_mask.png"), mask)
    return root


def test_auto_turns_a_rotated_part_and_leaves_a_fixed_board_where_it_is(tmp_path: Path) -> None:
    """A 4-fold part at any angle is registered by rotation (its mirror image stays a defect); a board
    that fills the picture in one pose gets shift or none, where a part moved or missing is the defect;
    a nut in a fixture keeps its turned parts defects (rotation turns it only as far as training did)."""
    from tests.test_registration_methods import fixture_part, nut

    rng = np.random.default_rng(0)

    def pose() -> dict:
        return {"angle": float(rng.uniform(-180, 180)), "shift": tuple(rng.uniform(-4, 4, 2)), "seed": int(rng.integers(1e6)),
                "size": 96}
    nuts = write_part(tmp_path / "nut", nut, [pose() for _ in range(6)],
                      {"spot": [{**pose(), "spot": (48 + int(rng.integers(-12, 12)), 30)} for _ in range(4)],
                       "flip": [{**pose(), "mirror": True} for _ in range(4)]}, [pose() for _ in range(16)])

    def jitter() -> dict:
        return {"shift": tuple(rng.uniform(-2, 2, 2)), "seed": int(rng.integers(1e6))}
    boards = write_part(tmp_path / "board", fixture_part, [jitter() for _ in range(6)],
                        {"missing": [{**jitter(), "missing": True} for _ in range(4)],
                         "moved": [{"shift": (float(rng.choice([-1, 1]) * 25), 0.0)} for _ in range(4)]},
                        [jitter() for _ in range(16)])

    def fixed_nut(turn: float = 0.0, **kw: Any) -> np.ndarray:   # a nut in a fixture: turned IS the defect
        return nut(turn + kw.pop("play"), **kw)

    def play() -> dict:
        return {"play": float(rng.uniform(-3, 3)), "shift": tuple(rng.uniform(-2, 2, 2)), "seed": int(rng.integers(1e6)),
                "size": 96}
    fixed = write_part(tmp_path / "fixed", fixed_nut, [play() for _ in range(6)],
                       {"turned": [{**play(), "turn": float(rng.choice([-1, 1]) * rng.uniform(20, 45))}
                                   for _ in range(6)]}, [play() for _ in range(16)])
    chosen, rows = {}, {}
    for name, data in (("nut", nuts), ("board", boards), ("fixed", fixed)):
        assert main(["--config", "auto", "--data", str(data), "--deploy", str(tmp_path / name / "deploy"),
                     "--budget", "2"]) == 0
        setup = json.loads((tmp_path / name / "deploy" / "v0001" / "setup.json").read_text())
        winner = [r for r in setup["rows"] if r["name"] == setup["winner"]][0]
        chosen[name] = (winner["registration"]["method"], winner["image_auroc"])
        rows[name] = {r["name"]: r for r in setup["rows"]}
    assert chosen["nut"][0] == "rotation" and chosen["nut"][1] > 0.9
    assert chosen["board"][0] in ("shift", "none") and chosen["board"][1] > 0.9
    assert chosen["fixed"][1] > 0.9     # whatever it registers with, a turned part in a fixture stays a defect
    # rotation too: it turns a part only as far as the training parts were turned (they came in one pose)
    assert rows["fixed"]["template-128-rotation+light"]["image_auroc"] > 0.9


@pytest.mark.parametrize("problem", ["few", "sizes", "channels"])
def test_a_folder_the_set_up_cannot_use_says_why_and_deploys_nothing(problem: str, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for i in range(6 if problem == "few" else 12):
        side = 64 if problem == "sizes" and i == 7 else 48
        img = np.full((side, side), 20, np.uint8)
        cv2.circle(img, (side // 2, side // 2), side // 4, 200, -1)
        if problem == "channels" and i == 7:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(good / f"{i:02d}.png"), img)
    deploy = tmp_path / "deploy"
    assert main(["--config", "auto", "--data", str(good), "--heldout", str(good), "--deploy", str(deploy),
                 "--budget", "2"]) == 1
    said = capsys.readouterr()
    said = said.out + said.err
    assert {"few": "6 good images; the set-up needs at least 10", "sizes": "07.png: 64x64 gray, but 00.png is 48x48 gray",
            "channels": "07.png: 48x48 colour, but 00.png is 48x48 gray"}[problem] in said
    assert not (deploy / "current").exists()
