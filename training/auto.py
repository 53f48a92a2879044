"""The automatic set-up behind `python -m training.retrain --config auto`: from a folder of good
images to the setting a new part is inspected with, by a rule written down before any run.

  survey     up to SURVEY_IMAGES good images: size, colour (channels that differ), how many show
             one part on a background (the silhouette registration needs), its elongation
  candidates the registration methods that apply (none and shift always; rotation where a part
             stands on a background; principal_axis where it is also elongated), each built as a
             template at SEARCH_SIZE px (seconds), the best of them again with the other lighting
             normalization and again with a TOLERANCE-pixel tolerance of misalignment (the bank's
             tolerance: whether edges that never align exactly are noise or the defect is the
             part's); then, with the best registration, the template at TEMPLATE_SIZES (seconds,
             with the best tolerance) and every trained family (without: a net that compares the
             part with its references learns its own tolerance, and on metal_nut the tolerant
             input cost the discriminative family AUPRO 0.833 -> 0.746 for the same image AUROC) (families.FAMILIES, by Family.rank), each
             only while the minutes spent plus its estimate fit --budget (the whole run's: the
             calibration and publishing that follow are reserved), and a step that runs past
             its estimate is stopped at the budget (core.steps deadline); until one is built, a
             candidate is built whatever the budget, so a set-up always deploys something; a built
             model's family variants (Family.variants: the discriminative net with the template's
             map blended in) are exported and scored as rows of their own, without a rebuild
  scoring    each candidate on the held-out set as the calibration sees it: with defective parts
             (labels, masks) calibration.calibrate --dry-run (image AUROC, AUPRO, held-out folds'
             recall at the calibrated FPR); with good parts only, calibration.synthetic (the same
             on synthetic defects pasted on the held-out good parts)
  the rule   the highest image AUROC wins; within TIE of the best, the higher AUPRO, then the higher
             recall, then the fewer build minutes. (Written 2026-12-07, before the first run. With
             labelled held-out parts the choice and the calibration use the same parts: the
             setting is chosen in-sample, as a human choosing on them would; the report says so.)
  settling   the setting the later candidates build on (the registration, the tolerance) is the
             simplest one, fewest options (lighting normalization, tolerance), among the template
             rows within one standard error of the best row's image AUROC (core.metrics.
             auroc_standard_error: 11 good held-out nuts make it 0.04-0.08): an option has to
             measure better than the luck of the held-out set to be built on. (Added 2026-12-07
             after a run without labels: on metal_nut lighting won 0.760 to 0.753 on synthetic
             defects, lost 0.841 to 0.898 on the real ones, and every trained candidate inherited it.)
The winner's files become the retraining candidate (calibrated, gated and deployed as any other);
the table of what was tried and why the winner won is printed and written to setup.json, the
winner's config to train.yaml.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.files import write_json
from core.images import ImageError, decode_file, to_uint8_channels
from core.metrics import auroc_standard_error
from core.registration.principal_axis import FIT_ELONGATION
from core.registration.silhouette import measure
from core.steps import StepFailed, StepStopped
from families import FAMILIES, BuildRequest
from families.template.build import good_images

SURVEY_IMAGES = 64
MIN_GOOD = 10
SEARCH_SIZE = 128
TEMPLATE_SIZES = (256,)
COLOUR_LEVELS = 4.0      # gray levels between channels (90th percentile of pixels) above which images are colour
PART_SHARE = 0.9         # share of images with one part on a background for part-based methods
TIE = 0.005
TOLERANCE = 1            # pixels: the misalignment tolerance tried (2 was worse than 1 on metal_nut at 128 and 256 px)
SYNTHETIC_COPIES = 3
VARIANT_MINUTES = 0.3    # exporting a built model again (a family variant): 12 s measured, discriminative at 128 px
SCORE_MINUTES = 0.4      # scoring a candidate on ~80 held-out parts (decode, registration, model, report)
FINISH_MINUTES = 0.6     # what retraining does after the set-up (calibration with its report, publishing):
                         # --budget is the whole run's
DEFAULT_BUDGET = 45.0    # minutes: the training budget on 2 cores
HOLDOUT_SHARE = 0.2      # of a folder of good images alone, held out for scoring and calibration
MIN_HELDOUT = 3


@dataclass
class Survey:
    images: int
    height: int
    width: int
    colour: bool
    parts: float                    # share of surveyed images where one part stands on a background
    elongation: float | None        # median elongation of those parts

    @property
    def channels(self) -> int:
        return 3 if self.colour else 1


def survey(data: Path) -> Survey:
    files = good_images(data)
    if len(files) < MIN_GOOD:
        raise ImageError(f"{files[0].parent}: {len(files)} good images; the set-up needs at least {MIN_GOOD} to learn "
                         "what good looks like (a few dozen is better): photograph more good parts")
    step = max(1, len(files) // SURVEY_IMAGES)
    shapes, spread, sils = [], [], []
    first: tuple[Path, tuple[int, ...]] | None = None
    for path in files[::step][:SURVEY_IMAGES]:
        raw = decode_file(path)
        form = (*raw.shape[:2], raw.shape[2] if raw.ndim == 3 else 1)
        first = first or (path, form)
        if form != first[1]:     # one camera set-up makes one kind of picture: another is the wrong folder
            raise ImageError(f"{path}: {describe(form)}, but {first[0].name} is {describe(first[1])}: the good images "
                             "must come from one camera set-up; move the others out of the folder")
        img = to_uint8_channels(raw, 3, source=str(path))
        shapes.append(img.shape[:2])
        f = img.astype(np.int16)
        spread.append(float(np.percentile(np.abs(f[:, :, 0] - f[:, :, 1]) + np.abs(f[:, :, 1] - f[:, :, 2]), 90)))
        sils.append(measure(img))
    ok = [s for s in sils if s.status == "ok"]
    h, w = (int(v) for v in np.median(np.array(shapes), axis=0))
    return Survey(len(files), h, w, float(np.median(spread)) > COLOUR_LEVELS, len(ok) / len(sils),
                  float(np.median([s.elongation for s in ok])) if ok else None)


def hold_out(data: Path, folder: Path) -> tuple[Path, Path]:
    """A folder of good images and nothing else to judge settings on: every fifth image (spread
    evenly over the folder's order, so a drift through the day lands on both sides) is held out
    for scoring and calibration. Written to folder/train and folder/heldout/good as hard links
    (copies across file systems), replaced atomically; returns (train, heldout)."""
    files = good_images(data)
    n = len(files)
    k = max(MIN_HELDOUT, round(HOLDOUT_SHARE * n))
    if n - k < MIN_GOOD:
        raise ValueError(f"--data {data}: {n} good images and no --heldout: the set-up holds out {k} to score and "
                         f"calibrate on and needs {MIN_GOOD} more to learn from; photograph at least {MIN_GOOD + k} "
                         "good parts, or give --heldout DIR")
    held = set(np.linspace(0, n - 1, k).round().astype(int).tolist())
    tmp = folder.with_name(f".{folder.name}-writing")
    shutil.rmtree(tmp, ignore_errors=True)
    for i, f in enumerate(files):
        target = tmp / ("heldout/good" if i in held else "train") / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder / "train", folder / "heldout"


def describe(form: tuple[int, ...]) -> str:
    h, w, c = form
    return f"{w}x{h} " + ("gray" if c == 1 else "colour")


def registrations(s: Survey) -> list[dict[str, str]]:
    """The registration settings that apply to the surveyed parts, the likeliest first (a tight
    budget builds those): rotation and, for elongated parts, principal_axis where a part stands on
    a background (with lighting normalization there: a test set lit differently is the common
    case), then shift and none."""
    parts = s.parts >= PART_SHARE
    methods = ["shift", "none"]
    if parts:
        if s.elongation is not None and s.elongation >= FIT_ELONGATION:
            methods.insert(0, "principal_axis")
        methods.insert(0, "rotation")    # first: it also beat principal_axis on the elongated screws
    return [{"method": m, "lighting": "background" if parts else "none"} for m in methods]


def other_lighting(registration: dict[str, str]) -> dict[str, str]:
    """The same method with the other lighting: tried for the best method only (a dark background
    can make the gain noise rather than a correction)."""
    return {**registration, "lighting": "none" if registration["lighting"] != "none" else "background"}


def setting_name(family: str, size: int, registration: dict[str, str], tolerance: int = 0) -> str:
    return (f"{family}-{size}-{registration['method']}" + ("+light" if registration["lighting"] != "none" else "")
            + (f"+tol{tolerance}" if tolerance else ""))


@dataclass
class Row:
    name: str
    family: str
    size: int
    registration: dict[str, str]
    estimate_min: float
    config: dict[str, Any] = field(repr=False)
    status: str = "planned"         # built, failed, stopped (past the budget), skipped (budget)
    minutes: float | None = None
    image_auroc: float | None = None
    aupro: float | None = None
    recall: float | None = None
    note: str = ""
    model: str | None = None
    tolerance: int = 0
    variant: str | None = None      # a family variant (Family.variants) of the built model `source`
    source: str | None = None
    positives: int = 0              # the defective and good parts image_auroc was measured on
    negatives: int = 0

    def standard_error(self) -> float:
        """image_auroc's standard error on the parts it was measured on (core.metrics)."""
        return auroc_standard_error(self.key()[0], self.positives, self.negatives)

    def options(self) -> int:
        """How many options the setting adds to its registration method (settle prefers fewer)."""
        return int(self.registration.get("lighting", "none") != "none") + int(self.tolerance > 0)

    def key(self) -> tuple[float, float, float, float]:
        """What the rule compares, higher is better (minutes negated)."""
        def v(x: float | None) -> float:
            return -1.0 if x is None or not np.isfinite(x) else float(x)
        return v(self.image_auroc), v(self.aupro), v(self.recall), -(self.minutes or 0.0)


def choose(rows: list[Row]) -> Row:
    """The rule of the module docstring over the built rows."""
    built = [r for r in rows if r.status == "built" and r.image_auroc is not None]
    if not built:
        raise StepFailed("the automatic set-up built no candidate it could score; see the steps above")
    top = max(r.key()[0] for r in built)
    close = [r for r in built if r.key()[0] >= top - TIE]
    return max(close, key=lambda r: r.key()[1:])


def settle(rows: list[Row]) -> Row:
    """The row later candidates build on (module docstring, settling): the fewest options among
    the built rows within one standard error of the rule's choice, then the rule."""
    best = choose(rows)
    close = [r for r in rows if r.status == "built" and r.image_auroc is not None
             and r.key()[0] >= best.key()[0] - best.standard_error()]
    fewest = min(r.options() for r in close)
    return choose([r for r in close if r.options() == fewest])


def plan_row(family: str, size: int, registration: dict[str, str], s: Survey, data_section: dict[str, Any],
             tolerance: int = 0) -> Row:
    """The candidate's row: the family's config for a new part with this registration, and the
    tolerance where the family's map has one (families that compare with references)."""
    fam = FAMILIES[family]
    config = fam.new_part(size, s.channels, registration)
    config["data"] = {**config.get("data", {}), **data_section}
    tolerance = tolerance if "tolerance" in config["model"] else 0
    if tolerance:
        config["model"]["tolerance"] = tolerance
    return Row(setting_name(family, size, registration, tolerance), family, size, dict(registration),
               round(fam.estimate(config, s.images) + SCORE_MINUTES, 2), config, tolerance=tolerance)


def variant_row(row: Row, option: str) -> Row:
    """The built `row` exported again with a family variant (Family.variants): no rebuild."""
    config = copy.deepcopy(row.config)
    config["model"][option] = True
    return Row(f"{row.name}+{option}", row.family, row.size, dict(row.registration),
               round(VARIANT_MINUTES + SCORE_MINUTES, 2), config, tolerance=row.tolerance, variant=option,
               source=row.model)


def table(rows: list[Row], winner: Row | None) -> list[str]:
    def f(x: float | None, pct: bool = False) -> str:
        return "-" if x is None else (f"{x:.0%}" if pct else f"{x:.3f}")
    lines = [f"  {'setting':<40} {'est min':>7} {'min':>6} {'img AUROC':>9} {'AUPRO':>6} {'recall':>6}  status"]
    for r in rows:
        mark = "*" if winner is not None and r is winner else " "
        lines.append(f"{mark} {r.name:<40} {r.estimate_min:>7.1f} {f(r.minutes) if r.minutes is None else f'{r.minutes:.1f}':>6} "
                     f"{f(r.image_auroc):>9} {f(r.aupro):>6} {f(r.recall, True):>6}  {r.status}"
                     + (f": {r.note}" if r.note else ""))
    return lines


def setup(data: Path, heldout: Path, stage: Path, stem: str, budget: float, data_section: dict[str, Any],
          overrides: list[str], run: Callable[..., None]) -> tuple[dict[str, Any], Path]:
    """Survey, build and score the candidates inside stage/setup/, choose; the winner's files (its
    folder's files: model, sidecar, config, bank or checkpoint) move into `stage` and its config
    is returned with its model file (stage/<stem>.onnx). overrides: flags for the trained
    families' training step (--epochs, --max-steps, --device); run(name, module, args, **kw) runs
    a step (core.steps.run_step with its logs and timings)."""
    started = time.perf_counter()
    try:
        s = survey(data)
    except ImageError as e:
        raise StepFailed(f"survey: {e}") from e
    print(f"== setup: {s.images} good images, {s.width}x{s.height}, {'colour' if s.colour else 'gray'}; one part on a "
          f"background in {s.parts:.0%}" + (f", elongation {s.elongation:.2f}" if s.elongation else ""), flush=True)
    if 0 < s.parts < PART_SHARE:
        print(f"note: one part on a plain background was found in only {s.parts:.0%} of the good images (rotation and "
              f"principal_axis need {PART_SHARE:.0%}): only shift and none are tried; a darker, even background "
              "behind the part would let the set-up turn parts to one pose", flush=True)
    folder = stage / "setup"
    rows: list[Row] = []
    labelled: list[bool] = []

    def attempt(row: Row) -> None:
        spent = (time.perf_counter() - started) / 60
        # the first candidate is built whatever the budget: a set-up that deploys nothing helps no one
        bound = any(r.status == "built" for r in rows)
        if bound and spent + row.estimate_min + FINISH_MINUTES > budget:
            row.status, row.note = "skipped", (f"{spent:.1f} + {row.estimate_min:.1f} min estimated (+ {FINISH_MINUTES:g} to "
                                               f"finish) > --budget {budget:g}")
            return
        where = folder / row.name
        where.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        # once a candidate is built, a later one that runs past its estimate is stopped at the
        # budget, or sooner where its progress says it cannot end in it: --budget is a promise
        deadline = time.monotonic() + (budget - FINISH_MINUTES - spent) * 60 if bound else None

        def step(name: str, module: str, args: list[str], epochs: bool = False) -> None:
            # a training step shows its bar; the many short builds and scores go to their logs
            run(f"{row.name}.{name}", module, args, epochs=epochs, quiet=not epochs, deadline=deadline)

        cfg = where / "train.yaml"
        cfg.write_text(yaml.safe_dump(row.config, sort_keys=False))
        try:
            fam, req = FAMILIES[row.family], BuildRequest(cfg, where / f"{stem}.onnx", None, overrides, step)
            model = fam.variant(row.variant)(req, Path(row.source)) if row.variant else fam.builder()(req)
            row.minutes = (time.perf_counter() - t) / 60
            _score(row, model, heldout, where, step, labelled)
            row.status, row.model = "built", str(model)
        except StepFailed as e:
            row.status, row.note = "stopped" if isinstance(e, StepStopped) else "failed", str(e).split("; its log")[0]
        print("\n".join(table([row], None)[1:]), flush=True)

    first = [plan_row("template", SEARCH_SIZE, reg, s, data_section) for reg in registrations(s)]
    need = (time.perf_counter() - started) / 60 + first[0].estimate_min + FINISH_MINUTES
    if need > budget:
        raise StepFailed(f"--budget {budget:g} min is too small: the cheapest candidate ({first[0].name}) needs about "
                         f"{need:.1f} min with its scoring, the calibration and publishing; give --budget "
                         f"{math.ceil(need)} or more")
    for row in first:
        rows.append(row)
        attempt(row)
    if s.parts >= PART_SHARE:
        reg = other_lighting(choose(rows).registration)
        rows.append(plan_row("template", SEARCH_SIZE, reg, s, data_section))
        attempt(rows[-1])
    rows.append(plan_row("template", SEARCH_SIZE, settle(rows).registration, s, data_section, TOLERANCE))
    attempt(rows[-1])
    best, top = settle(rows), choose(rows)
    print(f"== setup: later candidates build on {best.name}'s registration and tolerance (the fewest options within "
          f"{top.standard_error():.3f}, one standard error, of "
          f"{top.name}'s image AUROC)", flush=True)
    later = [plan_row("template", size, best.registration, s, data_section, best.tolerance)
             for size in TEMPLATE_SIZES if size <= max(s.height, s.width)]
    later += [plan_row(name, SEARCH_SIZE, best.registration, s, data_section) for name in FAMILIES if name != "template"]
    for row in sorted(later, key=lambda r: (FAMILIES[r.family].trains, FAMILIES[r.family].rank, r.estimate_min)):
        rows.append(row)
        attempt(row)
        for option in FAMILIES[row.family].variants if row.status == "built" else ():
            rows.append(variant_row(row, option))
            attempt(rows[-1])
    winner = choose(rows)
    lines = table(rows, winner)
    basis = "held-out parts with labels" if labelled and labelled[0] else "synthetic defects on held-out good parts"
    why = (f"rule: highest image AUROC on {basis}; within {TIE} of it the higher AUPRO, then recall, then fewer minutes"
           + ("; chosen on the parts calibration uses next (in-sample)" if labelled and labelled[0] else ""))
    print("== setup: what was tried\n" + "\n".join(lines) + f"\n== setup: {winner.name} ({why})", flush=True)
    model = Path(winner.model)
    for p in model.parent.iterdir():   # the model, its sidecar and what it names (bank, checkpoint)
        if p.is_file():
            shutil.move(str(p), stage / p.name)
    write_json(stage / "setup.json", {"survey": asdict(s), "budget_min": budget, "rule": why,
                                      "winner": winner.name, "minutes": (time.perf_counter() - started) / 60,
                                      "rows": [{k: v for k, v in asdict(r).items() if k != "config"} for r in rows]})
    shutil.rmtree(folder, ignore_errors=True)    # the losers' checkpoints can be hundreds of MB
    return winner.config, stage / model.name


def _score(row: Row, model: Path, heldout: Path, where: Path, run: Callable[..., None], labelled: list[bool]) -> None:
    """Fill row's measures from calibration (labelled held-out parts) or synthetic defects."""
    if not labelled or labelled[0]:
        run("score", "calibration.calibrate", ["--engine", str(model), "--data", str(heldout), "--report",
                                               str(where / "score"), "--dry-run", "--force", "--quiet", "--worst", "0",
                                               "--bootstrap", "100"])
        body = json.loads((where / "score" / "calibration.json").read_text(encoding="utf-8"))
        if not labelled:
            labelled.append(body.get("mode") != "normal-only")
        if labelled[0]:
            row.image_auroc = (body.get("auroc") or {}).get("image")
            row.positives, row.negatives = int(body["data"]["defective"]), int(body["data"]["good"])
            row.aupro = body.get("aupro")
            row.recall = ((body.get("folds") or {}).get("recall") or {}).get("mean")
            return
    run("score", "calibration.synthetic", ["--engine", str(model), "--data", str(heldout), "--out",
                                                      str(where / "synthetic.json"), "--copies", str(SYNTHETIC_COPIES)])
    body = json.loads((where / "synthetic.json").read_text(encoding="utf-8"))
    row.image_auroc, row.aupro = body["auroc"]["image"], body["aupro"]
    row.positives, row.negatives = int(body["images"]["defective"]), int(body["images"]["good"])
    row.recall = body["recall_at_fpr"]["recall"]
