"""calibration's numbers on small hand-computed cases: ROC cuts, rules, conformal bound, k-fold, bootstrap."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.estimate import bootstrap, folds_for, kfold, stratified_folds
from calibration.roc import Curve, counts, rates
from calibration.scores import Scores
from calibration.thresholds import Rule, choose, choose_image, choose_pixel, conformal, measure, parse_rule
from core.metrics import best_iou

# 5 good, 4 defective; sorted: 0.9g 0.8d 0.6d 0.5d 0.4g 0.35d 0.3g 0.2g 0.1g
GOOD = [0.1, 0.2, 0.3, 0.4, 0.9]
BAD = [0.35, 0.5, 0.6, 0.8]
LABELS = np.array([False] * 5 + [True] * 4)
SCORES = np.array(GOOD + BAD)


def image(rule: str) -> float:
    return choose_image(parse_rule(rule, "image"), LABELS, SCORES).threshold


def test_curve_counts_every_cut() -> None:
    c = Curve.of(LABELS, SCORES)
    assert c.values.tolist() == [0.9, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.2, 0.1]
    assert c.tp.tolist() == [0, 0, 1, 2, 3, 3, 4, 4, 4, 4]
    assert c.fp.tolist() == [0, 1, 1, 1, 1, 2, 2, 3, 4, 5]
    assert (c.pos, c.neg) == (4, 5)
    assert c.threshold(4) == pytest.approx(0.45)          # between 0.5 (NG) and 0.4 (OK)
    assert c.threshold(0) > 0.9 and c.threshold(9) < 0.1
    for j in range(c.cuts + 1):  # a cut's threshold makes exactly the cut's decisions (score >= t is NG)
        got = counts(LABELS, SCORES, c.threshold(j))
        assert (got["tp"], got["fp"]) == (c.tp[j], c.fp[j]) and c.cut_at(c.threshold(j)) == j
    # ties: equal scores fall on the same side
    tied = Curve.of(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.7]))
    assert tied.values.tolist() == [0.7, 0.5, 0.2]
    assert tied.tp.tolist() == [0, 1, 2, 2] and tied.fp.tolist() == [0, 0, 1, 2]


def test_a_failed_registration_is_rejected_at_every_cut() -> None:
    c = Curve.of(np.array([0, 0, 1]), np.array([0.2, np.inf, 0.5]))
    assert c.values.tolist() == [0.5, 0.2] and c.fp.tolist() == [1, 1, 2] and c.tp.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="NaN"):
        Curve.of(np.array([0, 1]), np.array([0.1, np.nan]))


def test_image_rules_by_hand() -> None:
    assert image("fpr=0.2") == pytest.approx(0.45)      # one good of five may be rejected: down to 0.5
    assert image("fpr=0.19") == pytest.approx(0.9 + 0.008)  # none may: above every score
    assert image("youden") == pytest.approx(0.325)      # recall 1 - FPR 0.4 = 0.6 at 0.35
    assert image("f1") == pytest.approx(0.325)          # F1 8 / 10
    assert image("recall=0.7") == pytest.approx(0.45)   # 3 of 4 defective
    assert image("recall=0.9") == pytest.approx(0.325)
    # "FPR <= 0.2" admits exactly one good of five (counts / n against a decimal X)
    assert choose_image(parse_rule("fpr=0.2", "image"), LABELS, SCORES).info == {"fpr": 0.2, "recall": 0.75}
    # with a failed good part already rejected (FPR 1/6 at any threshold), FPR <= 0.15 is out of reach
    labels = np.r_[LABELS, False]
    got = choose_image(parse_rule("fpr=0.15", "image"), labels, np.r_[SCORES, np.inf])
    assert got.threshold > 0.9 and "unregistered" in got.note


def test_pixel_rules_by_hand_and_best_iou_is_core_metrics() -> None:
    y = np.array([1, 1, 0, 0, 0], bool)
    s = np.array([0.9, 0.5, 0.6, 0.2, 0.1])
    iou, thr = best_iou(y, s)
    assert (iou, thr) == (pytest.approx(2 / 3), 0.5)
    got = choose_pixel(parse_rule("best-iou", "pixel"), y, s)
    assert got.threshold == pytest.approx(0.35) and got.info["iou"] == pytest.approx(2 / 3)
    assert got.method == "core.metrics.best_iou"
    assert choose_pixel(parse_rule("f1", "pixel"), y, s).threshold == pytest.approx(0.35)
    assert choose_pixel(parse_rule("fpr=0.34", "pixel"), y, s).threshold == pytest.approx(0.35)
    assert choose_pixel(parse_rule("fpr=0.3", "pixel"), y, s).threshold == pytest.approx(0.75)
    assert rates(counts(y, s, 0.35)) == pytest.approx({"fpr": 1 / 3, "recall": 1.0, "precision": 2 / 3,
                                                       "iou": 2 / 3, "f1": 0.8})


def test_rule_grammar() -> None:
    assert parse_rule("fpr=0.05", "image") == Rule("image", "fpr", 0.05)
    assert str(parse_rule(" FPR = 0.05 ", "image")) == "fpr=0.05"
    assert parse_rule("best-iou", "pixel") == Rule("pixel", "best-iou")
    assert parse_rule("recall=0.9", "image").value == 0.9
    for text, level in (("youden", "pixel"), ("best-iou", "image"), ("recall=0.9", "pixel"), ("fpr", "image"),
                        ("fpr=0", "image"), ("fpr=1", "image"), ("fpr=nan", "image"), ("fpr=x", "pixel"),
                        ("f1=0.3", "image"), ("", "image")):
        with pytest.raises(ValueError, match=f"--{level}-rule .*use one of"):
            parse_rule(text, level)


def test_conformal_threshold_and_bound() -> None:
    s = np.arange(1, 40) / 100.0                         # 39 normals: k = ceil(40 * 0.95) = 38
    got = conformal(s, 0.05)
    assert got.threshold == pytest.approx(0.385) and got.info["k"] == 38 and got.info["flagged"] == 1
    assert got.info["bound"] == pytest.approx(2 / 40) and got.note is None
    got = conformal(s[:19], 0.05)                        # 19: k = 19, the max passes, bound 1/20
    assert got.threshold > 0.19 and got.info["flagged"] == 0 and got.info["bound"] == pytest.approx(0.05)
    few = conformal(s[:10], 0.05)                        # 10 cannot reach 0.05: bound 1/11, said
    assert few.threshold > 0.10 and few.info["bound"] == pytest.approx(1 / 11) and "cannot guarantee" in few.note
    # the guarantee itself: over many calibration sets the FPR on fresh normals is at most alpha
    rng = np.random.default_rng(0)
    fresh = rng.normal(size=20000)
    fprs = [np.mean(fresh >= conformal(rng.normal(size=39), 0.1).threshold) for _ in range(300)]
    assert np.mean(fprs) <= 0.1 + 0.01 and np.mean(fprs) > 0.07   # (39 + 1 - 36) / 40 = 0.1


def scores_of(labels: list[bool], values: list[float], size: int = 4, seed: int = 0) -> Scores:
    """Per image: a map whose max is the score, a defect mask on the defective ones' hot pixel."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    maps = rng.uniform(0, 0.05, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), bool)
    for i, (bad, v) in enumerate(zip(labels, values)):
        maps[i, 1, 1] = v if math.isfinite(v) else 0
        masks[i, 1, 1] = bad
    return Scores.build([f"{i:02d}.png" for i in range(n)], labels, values, maps, masks)


def test_choose_and_measure_labelled_and_normal_only() -> None:
    data = scores_of(list(LABELS), list(SCORES))
    c = choose(data, parse_rule("best-iou", "pixel"), parse_rule("fpr=0.2", "image"))
    assert c.mode == "labelled" and c.image.threshold == pytest.approx(0.45)
    got = measure(data, c.pixel.threshold, c.image.threshold)
    assert got["image_fpr"] == pytest.approx(0.2) and got["recall"] == pytest.approx(0.75)
    assert got["precision"] == pytest.approx(0.75)
    normal = scores_of([False] * 39, list(np.arange(1, 40) / 100.0))
    c = choose(normal, parse_rule("best-iou", "pixel"), parse_rule("youden", "image"))
    assert c.mode == "normal-only" and c.image.method == "conformal" and c.image.rule == "fpr=0.05"
    assert "needs defective images" in c.image.note and c.pixel.threshold == c.image.threshold
    got = measure(normal, c.pixel.threshold, c.image.threshold)
    assert math.isnan(got["recall"]) and got["image_fpr"] == pytest.approx(1 / 39)
    with pytest.raises(ValueError, match="no good images"):
        choose(scores_of([True, True], [0.3, 0.4]), parse_rule("f1", "pixel"), parse_rule("f1", "image"))


def test_image_labels_only_choose_the_pixel_threshold_on_the_good_images_alone() -> None:
    """Without defect masks a defective image's pixels are of unknown class: counting them as
    normal pixels put a pixel fpr=X threshold above the defects themselves."""
    with_masks = scores_of(list(LABELS), list(SCORES))
    data = Scores(with_masks.files, with_masks.labels, with_masks.scores, with_masks.maps,
                  np.zeros_like(with_masks.masks), with_masks.index, masked=False)
    assert data.pixel_images.tolist() == (~LABELS).tolist() and data.take(np.arange(3)).masked is False
    c = choose(data, parse_rule("fpr=0.05", "pixel"), parse_rule("fpr=0.2", "image"))
    assert c.mode == "image-labels" and c.image.threshold == pytest.approx(0.45)  # the labelled ROC
    good = np.sort(data.maps[~LABELS].ravel())[::-1]                            # 5 x 16 good pixels
    assert good[4] < c.pixel.threshold < good[3]                                # 4 of 80 above: 5 %
    got = measure(data, c.pixel.threshold, c.image.threshold)
    assert got["pixel_fpr"] == pytest.approx(0.05) and math.isnan(got["pixel_iou"]) and got["recall"] == 0.75
    c = choose(data, parse_rule("best-iou", "pixel"), parse_rule("youden", "image"))
    assert c.pixel.rule == "normal-max fpr=0.05" and c.pixel.method == "conformal" and "needs defect masks" in c.pixel.note
    assert c.pixel.threshold > 0.9  # 5 normals: above every good maximum (0.9), the conformal bound 1/6


def test_folds_are_stratified_and_k_is_reduced_when_a_class_is_small() -> None:
    labels = np.array([False] * 12 + [True] * 7)
    folds = stratified_folds(labels, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(19))  # each image held out exactly once
    assert all(labels[f].any() and (~labels[f]).any() for f in folds)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert [f.tolist() for f in folds] == [f.tolist() for f in stratified_folds(labels, 5, seed=3)]
    assert folds_for(labels, 5) == (5, None)
    k, note = folds_for(np.array([False] * 10 + [True] * 3), 5)
    assert k == 3 and "only 3 defective images: k reduced from 5 to 3" in note
    k, note = folds_for(np.array([False] * 10 + [True]), 5)
    assert k == 0 and "too few" in note
    assert folds_for(np.zeros(8, bool), 5) == (5, None)   # normal-only: folds of good parts


def test_kfold_never_measures_on_data_it_chose_on() -> None:
    rng = np.random.default_rng(1)
    labels = [False] * 12 + [True] * 8
    data = scores_of(labels, list(rng.uniform(0.1, 1.0, 20)))
    seen: list[tuple[set[int], set[int]]] = []
    chose_on: list[set[int]] = []

    def spy_choose(d: Scores) -> set[int]:
        chose_on.append(set(d.index.tolist()))
        return chose_on[-1]

    def spy_measure(d: Scores, chosen_on: set[int]) -> dict[str, float]:
        seen.append((chosen_on, set(d.index.tolist())))
        return dict.fromkeys(("image_fpr", "recall", "precision", "pixel_iou", "pixel_fpr"), 0.0)

    out = kfold(data, 5, 0, spy_choose, spy_measure)
    assert out["k"] == 5 and len(seen) == 5
    held_all: list[int] = []
    for chosen, held in seen:
        assert not chosen & held and chosen | held == set(range(20))
        held_all += sorted(held)
    assert sorted(held_all) == list(range(20))
    # and with the real rules: changing the held-out images' scores leaves each fold's thresholds alone
    real = kfold(data, 5, 0, lambda d: choose(d, Rule("pixel", "best-iou"), Rule("image", "fpr", 0.1)),
                 lambda d, c: {**measure(d, c.pixel.threshold, c.image.threshold),
                               "thresholds": {"image": c.image.threshold}})
    first = stratified_folds(data.labels, 5, 0)[0]
    changed = Scores(data.files, data.labels, data.scores.copy(), data.maps, data.masks, data.index)
    changed.scores[first] += 5.0
    again = kfold(changed, 5, 0, lambda d: choose(d, Rule("pixel", "best-iou"), Rule("image", "fpr", 0.1)),
                  lambda d, c: {**measure(d, c.pixel.threshold, c.image.threshold),
                                "thresholds": {"image": c.image.threshold}})
    assert again["folds"][0]["thresholds"] == real["folds"][0]["thresholds"]
    assert again["folds"][1]["thresholds"] != real["folds"][1]["thresholds"]


def test_bootstrap_is_seeded_and_brackets_the_in_sample_rate() -> None:
    rng = np.random.default_rng(2)
    labels = [False] * 30 + [True] * 20
    values = list(np.r_[rng.normal(0.3, 0.1, 30), rng.normal(0.6, 0.1, 20)])
    data = scores_of(labels, values)
    a = bootstrap(data, 0.45, 0.45, resamples=500, seed=4)
    assert a == bootstrap(data, 0.45, 0.45, resamples=500, seed=4)
    inside = measure(data, 0.45, 0.45)
    for m, key in (("image_fpr", "image_fpr"), ("recall", "recall"), ("pixel_iou", "pixel_iou")):
        assert a[m]["low"] <= inside[key] <= a[m]["high"]
    assert a["image_fpr"]["low"] < a["image_fpr"]["high"]


def test_a_fold_with_nothing_scored_to_choose_on_is_a_calibration_error() -> None:
    """5 of 6 good parts fail registration: the thresholds exist (one part was scored), but the
    fold holding that part chooses on the other five, none scored. choose's plain ValueError used
    to escape calibration.calibrate's error handling as a traceback; it is a CalibrationError
    (exit 1, one line) that says why."""
    from calibration.analyse import CalibrationError, analyse
    from calibration.collect import Collected

    n = 6
    maps = np.zeros((n, 8, 8), np.float32)
    maps[5] = np.linspace(0, 1, 64).reshape(8, 8)
    data = Scores.build([f"{i}.png" for i in range(n)], [False] * n, [math.inf] * 5 + [0.3], maps,
                        np.zeros((n, 8, 8), bool))
    c = Collected(data, (), [], {"no_part": 5, "ok": 1}, [], None, (8, 8))
    with pytest.raises(CalibrationError, match="k-fold"):
        analyse(c, parse_rule("best-iou", "pixel"), parse_rule("fpr=0.05", "image"))


def test_a_failed_registration_ranks_as_a_rejection_in_the_image_auroc() -> None:
    """A part the registration refuses (turned in a fixture, missing) is rejected by the line: the
    image AUROC ranks it above every score instead of leaving it out."""
    from calibration.analyse import line_ranking
    from core.metrics import roc_auc

    labels = np.array([False, False, False, True, True])
    scores = np.array([0.1, 0.2, 0.3, np.inf, np.inf])       # both defects failed registration
    ranked = line_ranking(scores)
    assert np.isfinite(ranked).all() and ranked[3] == ranked[4] > 0.3
    assert roc_auc(labels, ranked) == 1.0
    assert roc_auc(labels, line_ranking(np.array([np.inf, 0.2, 0.3, 0.5, 0.6]))) == pytest.approx(4 / 6)
