"""Export benchmark: what the explicit backward costs in ONNX Runtime, and what it saves over eager.

    python -m bench.export [--config configs/screw_256.yaml] [--checkpoint PT] [--batches 1 8]
        [--runs 20] [--warmup 3] [--threads 1 2] [--calib-data DIR] [--results bench/results]

The screw model of configs/screw_256.yaml (ResNet18 VAE, 256x256, inference layer3 / sum_mu /
recon_error_blur): --checkpoint, or else the untrained model (random weights; latency does not
depend on the weights). On this CPU, in one run, ONNX Runtime (CPU) at each batch size and each
--threads count (intra-op threads):
  forward      the graph without attention: preprocess, encoder, heads, decoder, recon_error, blur
               (what the model's anomaly map needs, no backward), built here from the model's modules
  attn-fc      export.graph.ExportModule at layer4 (backward crosses only the fc head)
  attn-layer3  ExportModule at layer3 (backward crosses layer4: conv, BN, ReLU, residual): the fp32
               full graph deployed today
  line         export.onnx --outputs anomaly_map: the fp32 line graph (only what the verdict needs)
  int8-line    export.quantize of the line graph, calibrated on --calib-data (default the shared
               screw training parts, else synthetic parts), prepared as the runtime prepares them
and PyTorch on the same thread count:
  eager        training.inference.reference_outputs (forward + autograd), the reference path
  torch-graph  ExportModule in eager PyTorch (what the runtime's PyTorch backend runs)
Latency is the median of --runs (>= 20) after --warmup, the configurations interleaved round by
round in shuffled order so that load from other processes on the shared machine hits all of them
alike (ONNX Runtime threads do not spin between runs, which would starve the next case).
Targets: attn-layer3 <= 1.15x forward, eager >= 1.6x attn-layer3 at batch 1; int8-line >= 3x
faster than attn-layer3 at batch 1 (>= 2x at batch 8); line no slower than forward. Also reported:
export time and file size (fp32, fp16 weights, int8), the parity of each fp32 graph against
autograd at batch 1 (max err / range over outputs) and the INT8 map's error against the fp32 line
graph on its calibration images.
With a GPU: ExportModule on CUDA, eager and captured in a CUDA graph, batch 1 and 64.
Prints a table and writes bench/results/export.json.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from core.cli import int_at_least

REPO = Path(__file__).resolve().parents[1]
SCREW_GOOD = Path("../shared/data/mvtec/screw/train/good")


class ForwardOutputs(NamedTuple):
    mu: torch.Tensor
    logvar: torch.Tensor
    recon_error: torch.Tensor
    anomaly_map: torch.Tensor


class ForwardOnly(nn.Module):
    """The baseline graph: everything the anomaly map needs except the attention's backward.
    Built from the model's own modules and training.maps, as the export module is."""

    def __init__(self, model: nn.Module, anomaly_map: str, blur_sigma: float) -> None:
        from training.maps import AnomalyMap

        super().__init__()
        self.model = model.eval()
        self.amap = AnomalyMap(anomaly_map, blur_sigma)
        if not self.amap.needs_decoder or anomaly_map == "fusion":
            raise ValueError(f"anomaly_map '{anomaly_map}' needs the attention: no forward-only graph")

    def forward(self, image: torch.Tensor) -> ForwardOutputs:
        from training.maps import recon_error

        with torch.no_grad():
            x01, x = self.model.preprocess(image)
            mu, logvar = self.model.encode_features(x)
            recon = self.model.decoder(mu)
            return ForwardOutputs(mu, logvar, recon_error(x01, recon), self.amap(None, x01, recon, self.model.map_scale))


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000.0


def interleaved(cases: dict[str, Callable[[], Any]], runs: int, warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Milliseconds per call for each case, `runs` rounds, the cases taking turns in each round in
    a shuffled order (so that no case always follows the same neighbour)."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    rng = np.random.default_rng(seed)
    names = list(cases)
    for _ in range(runs):
        for i in rng.permutation(len(names)):
            times[names[i]].append(timed(cases[names[i]]))
    return times


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ms), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "runs": len(ms)}


def cuda_section(module: nn.Module, shape: tuple[int, int, int], runs: int, warmup: int) -> list[dict[str, Any]]:
    """ExportModule on CUDA, eager and replayed from a CUDA graph, batch 1 and 64."""
    module = module.cuda()
    rows = []
    for n in (1, 64):
        x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, device="cuda")

        def eager() -> None:
            module(x)
            torch.cuda.synchronize()

        static = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream before capture, as CUDA graphs require
            for _ in range(3):
                module(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            module(static)

        def replay() -> None:
            static.copy_(x)
            graph.replay()
            torch.cuda.synchronize()

        t = interleaved({"cuda-eager": eager, "cuda-graph": replay}, runs, warmup)
        for name, ms in t.items():
            rows.append({"case": name, "batch": n, **summary(ms), "images_per_s": 1000.0 * n / statistics.median(ms)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/screw_256.yaml", help="model + inference config")
    p.add_argument("--checkpoint", help="a trained checkpoint instead of the untrained config model")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=20, help="timed runs per case (>= 20 for the report)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int_at_least(1), nargs="+", default=[1, 2],
                   help="CPU threads for ONNX Runtime and PyTorch; each count is measured (default 1 2)")
    p.add_argument("--calib-data", default=str(SCREW_GOOD),
                   help="good parts the INT8 graph is calibrated on (default the shared screw training parts; "
                        "synthetic parts where they are absent)")
    p.add_argument("--results", default=str(REPO / "bench" / "results"), help="JSON output folder")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or min(args.batches) < 1:
        p.error("--runs and --batches must be >= 1, --warmup >= 0")
    # hundreds of MB of graphs: removed however the run ends
    with tempfile.TemporaryDirectory(prefix="bench_export_") as work:
        return run(args, Path(work), argv)


def run(args: argparse.Namespace, work: Path, argv: list[str] | None) -> int:
    """The benchmark of `main`, its files under `work`."""
    import onnxruntime

    from core import ort
    from export.check import compare
    from export.graph import build_export_module
    from export.onnx import export_onnx, trace_to_onnx
    from export.quantize import quantize
    from core.files import write_json
    from core.synthetic import make_parts
    from training.checkpoint import load_model, save_checkpoint
    from training.config import load_config
    from training.inference import reference_outputs
    from training.models import build_model

    try:
        config = load_config(args.config)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if config["model"].get("arch") != "resnet18" or config["inference"]["anomaly_map"] == "attention":
        # its cases are the ResNet's layer3 / layer4 graphs against a forward-only graph with the decoder
        print(f"error: {args.config}: bench.export measures the ResNet18 screw model with a decoder map "
              f"(arch resnet18, anomaly_map not 'attention'), not arch {config['model'].get('arch')!r} / "
              f"{config['inference']['anomaly_map']!r}", file=sys.stderr)
        return 1
    if args.checkpoint:
        ckpt, trained = Path(args.checkpoint), True
    else:
        torch.manual_seed(0)
        ckpt, trained = work / "screw_untrained.pt", False
        # nothing fitted a registration for random weights (training does), and speed does not depend on it
        save_checkpoint(ckpt, build_model(config["model"]), {**config, "registration": {"method": "none", "lighting": "none"}})
    try:
        model, config = load_model(ckpt)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    inf = config["inference"]
    h = w = int(config["model"]["size"])
    c = int(config["model"].get("channels", 1))
    print(f"model: {config['model']['arch']} {h}x{w}x{c}, {'trained: ' + str(ckpt) if trained else 'untrained (random weights)'}; "
          f"inference {inf['layer']} / {inf['score']} / {inf['anomaly_map']}; threads {args.threads}", file=sys.stderr)

    # --- export -------------------------------------------------------------------------------
    exports: dict[str, dict[str, Any]] = {}
    fwd_path = work / "forward.onnx"
    t = time.perf_counter()
    forward = ForwardOnly(model, inf["anomaly_map"], float(inf["blur_sigma"]))
    trace_to_onnx(forward, (h, w, c), list(ForwardOutputs._fields), fwd_path)
    exports["forward"] = {"seconds": time.perf_counter() - t, "bytes": fwd_path.stat().st_size}
    graphs = {"forward": fwd_path}
    for name, layer in (("attn-fc", "layer4"), ("attn-layer3", "layer3")):
        r = export_onnx(ckpt, work / f"{name}.onnx", layer=layer)
        exports[name] = {"seconds": r["seconds"], "bytes": r["bytes"], "layer": layer}
        graphs[name] = r["onnx"]
    r = export_onnx(ckpt, work / "attn-layer3-fp16.onnx", layer="layer3", fp16=True)
    exports["attn-layer3 (fp16 weights)"] = {"seconds": r["seconds"], "bytes": r["bytes"], "layer": "layer3"}
    r = export_onnx(ckpt, work / "line.onnx", outputs=["anomaly_map"])
    exports["line"] = {"seconds": r["seconds"], "bytes": r["bytes"]}
    graphs["line"] = r["onnx"]
    calib = Path(args.calib_data)
    if not calib.is_dir():  # speed does not depend on the images; synthetic parts stand in for absent data
        calib = make_parts(work / "parts") / "train" / "good"
    q = quantize(graphs["line"], calib, work / "int8-line.onnx")
    exports["int8-line"] = {"seconds": q["seconds"], "bytes": q["bytes"], "calibration": str(calib),
                            "images": len(q["calibration"].images), "map_error": q["map_error"]}
    graphs["int8-line"] = q["onnx"]
    for name, e in exports.items():
        print(f"exported {name:<27} {e['bytes'] / 1e6:7.1f} MB in {e['seconds']:5.1f} s", file=sys.stderr)

    # no busy-waiting: a session spinning after its run would steal the cores from the next case
    sessions = {(name, t): ort.session(path, device="cpu", threads=t) for name, path in graphs.items()
                for t in args.threads}
    modules = {"attn-layer3": build_export_module(ckpt, layer="layer3")[0]}

    # --- parity at batch 1 (the deployment contract, in passing) -------------------------------
    rng = np.random.default_rng(0)
    img1 = rng.integers(0, 256, (1, h, w, c), dtype=np.uint8)
    parity = {}
    for name, layer in (("attn-fc", "layer4"), ("attn-layer3", "layer3"), ("line", inf["layer"])):
        ref = reference_outputs(model, torch.from_numpy(img1), layer, inf["score"], inf["anomaly_map"],
                                float(inf["blur_sigma"]))
        ours = ort.run(sessions[name, args.threads[0]], img1)
        reps = compare(ours, {k: ref[k] for k in ours}, 1e-4, 1)
        parity[name] = {"max_err_over_range": max(r.max_abs_err / r.range if r.range else 0.0 for r in reps),
                        "outliers": sum(r.outliers for r in reps)}

    # --- latency --------------------------------------------------------------------------------
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)  # the bench only: the machine is shared
        for n in args.batches:
            x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
            tx = torch.from_numpy(x)
            cases: dict[str, Callable[[], Any]] = {name: (lambda s=sessions[name, threads]: ort.run(s, x))
                                                   for name in graphs}
            cases["eager"] = lambda: reference_outputs(model, tx, inf["layer"], inf["score"], inf["anomaly_map"],
                                                       float(inf["blur_sigma"]))
            cases["torch-graph"] = lambda: modules["attn-layer3"](tx)
            print(f"timing batch {n}, {threads} threads: {len(cases)} cases x {args.runs} runs", file=sys.stderr)
            for name, ms in interleaved(cases, args.runs, args.warmup).items():
                rows.append({"case": name, "batch": n, "threads": threads, **summary(ms),
                             "images_per_s": 1000.0 * n / statistics.median(ms)})

    def med(case: str, n: int, threads: int) -> float:
        return next(r["median_ms"] for r in rows if (r["case"], r["batch"], r["threads"]) == (case, n, threads))

    for r in rows:
        r["x_forward"] = r["median_ms"] / med("forward", r["batch"], r["threads"])
        r["x_attn_layer3"] = med("attn-layer3", r["batch"], r["threads"]) / r["median_ms"]  # speed-up over today's graph
    b1, b8 = min(args.batches), max(args.batches)
    targets = {}
    for t in args.threads:
        targets.update({
            f"{t} threads: attn-layer3 / forward (<= 1.15)": med("attn-layer3", b1, t) / med("forward", b1, t),
            f"{t} threads: attn-fc / forward (<= 1.15)": med("attn-fc", b1, t) / med("forward", b1, t),
            f"{t} threads: eager / attn-layer3 (>= 1.6)": med("eager", b1, t) / med("attn-layer3", b1, t),
            f"{t} threads: attn-layer3 / int8-line at batch {b1} (>= 3)": med("attn-layer3", b1, t) / med("int8-line", b1, t),
            f"{t} threads: attn-layer3 / int8-line at batch {b8} (>= 2)": med("attn-layer3", b8, t) / med("int8-line", b8, t),
            f"{t} threads: line / forward at batch {b1} (<= 1.00 + noise)": med("line", b1, t) / med("forward", b1, t)})
    gpu = cuda_section(modules["attn-layer3"], (h, w, c), args.runs, args.warmup) if torch.cuda.is_available() else []

    # --- report ---------------------------------------------------------------------------------
    print(f"\n{'case':<14}{'batch':>6}{'threads':>8}{'median ms':>11}{'p10':>9}{'p90':>9}{'img/s':>8}{'x forward':>11}"
          f"{'speed-up':>10}")
    for r in rows + gpu:
        xf = f"{r['x_forward']:>11.2f}{r['x_attn_layer3']:>10.2f}" if "x_forward" in r else ""
        print(f"{r['case']:<14}{r['batch']:>6}{r.get('threads', ''):>8}{r['median_ms']:>11.1f}{r['p10_ms']:>9.1f}"
              f"{r['p90_ms']:>9.1f}{r['images_per_s']:>8.1f}{xf}")
    print("(speed-up: attn-layer3's median over the case's, same batch and threads)")
    print("\ntargets:\n" + "\n".join(f"  {k}: {v:.2f}" for k, v in targets.items()))
    print("exports: " + "; ".join(f"{k} {e['bytes'] / 1e6:.1f} MB / {e['seconds']:.1f} s" for k, e in exports.items()))
    print("parity at batch 1 (max err/range over outputs): "
          + "; ".join(f"{k} {v['max_err_over_range']:.1e} ({v['outliers']} outliers)" for k, v in parity.items()))
    e = exports["int8-line"]["map_error"]
    print(f"int8-line anomaly_map vs line on its {e['images']} calibration images: max {e['max_over_range']:.2e}, "
          f"mean {e['mean_over_range']:.2e} x range")
    report = {"command": "python -m bench.export " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": {"config": args.config, "checkpoint": str(ckpt) if trained else None, "trained": trained,
                        "size": h, "channels": c, "inference": inf},
              "machine": {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                          "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                          "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
              "exports": exports, "parity": parity, "latency": rows, "cuda": gpu, "targets": targets}
    out = Path(args.results) / "export.json"
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
