"""Export a trained discriminative model as one ONNX graph under the contract (input `image` uint8
[N, H, W, C], registered on the host; output `anomaly_map` float [N, 1, H, W]):

    python -m families.discriminative.export --checkpoint runs/nut/model.pt --out nut.onnx

    the references   families.template.graph.reference_nodes: the bank inside the graph, the k
                     nearest bank images of the part, their mean, the least difference to them
    the net          net.DefectMap traced by the TorchScript exporter (normalization, U-Net,
                     sigmoid, blur), joined to the references by onnx.compose
The graph is checked against PyTorch (the numpy bank's references fed to the module training
used) on the bank's parts, the same with noise, and noise, and written atomically only when every
image agrees within PARITY_TOL x the map's range, at least the probability's full scale 1 (an image whose k-th and (k+1)-th references are
equally near may take the other one: reported as a tie, as the template's check does). The
sidecar X.yaml beside it says the family, the bank, the fitted registration and the normal scale.
With model.blend (or --blend on) the graph's map is net.Blended: the net's map plus the template's,
each over its normal 99th percentile on the bank (the net's from training; the template's from
the bank's leave-one-out maps), so the same checkpoint exports either way (the set-up scores both).
Exit codes: 0 written, 1 failure (unreadable checkpoint, a graph that disagrees), 2 usage.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import require, require_extra
from core.metrics import normal_scale
from families.discriminative.train import net_scale

OPSET = 17


def load(path: Path) -> tuple[Any, Any, dict[str, Any], str]:
    """(DefectMap in eval mode, TemplateBank, checkpoint, its sha256) from one read of the file.
    ValueError naming the file for anything that is not a discriminative checkpoint."""
    from families.discriminative.net import DefectMap  # noqa: PLC0415
    from families.template.bank import TemplateBank  # noqa: PLC0415
    from training.checkpoint import read_checkpoint  # noqa: PLC0415

    ckpt, digest = read_checkpoint(path)
    if ckpt.get("format") != "discriminative/1":
        raise ValueError(f"{path}: not a discriminative checkpoint (train one with python -m "
                         "families.discriminative.train)")
    m = ckpt["config"]["model"]
    net = DefectMap(int(m["channels"]), int(m["width"]), float(m["sigma"]))
    net.load_state_dict(ckpt["model"])
    net.eval()
    return net, TemplateBank(ckpt["bank"].numpy(), int(m["k"]), sigma=0, tolerance=int(m.get("tolerance", 0))), ckpt, \
        digest


def reference_map(net: Any, bank: Any) -> Any:
    """images uint8 [N, h, w, C] -> the map as training computes it: the numpy bank's references
    (TemplateBank.nearest, .references) through the PyTorch module."""
    import torch  # noqa: PLC0415

    from families.discriminative.train import batch_inputs  # noqa: PLC0415

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([net(*(torch.from_numpy(a) for a in batch_inputs(bank, images[i:i + 16],
                                                                                   bank.nearest(images[i:i + 16])[0])))
                                   .numpy() for i in range(0, len(images), 16)])
    return run


def build_graph(net: Any, bank: Any) -> Any:
    """The onnx.ModelProto: the reference subgraph joined to the traced net."""
    import onnx  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from onnx import compose, helper  # noqa: PLC0415

    from families.template.graph import finish, reference_nodes  # noqa: PLC0415

    n, h, w, c = bank.images.shape
    nodes, init = reference_nodes(bank)
    nodes.append(helper.make_node("ReduceMean", ["refs"], ["refs_mean"], axes=[1], keepdims=0))
    refs = finish(nodes, init, "references", (h, w, c), {}, outputs={"x": ["N", h, w, c],
                                                                      "refs_mean": ["N", h, w, c],
                                                                      "least": ["N", 1, h, w]})
    buf = io.BytesIO()
    example = (torch.zeros(1, h, w, c), torch.zeros(1, h, w, c), torch.zeros(1, 1, h, w))
    with warnings.catch_warnings():   # the exporter's notes on the blur's reflect padding: nothing to act on
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, buf, input_names=["x", "refs_mean", "least"], output_names=["anomaly_map"],
                          dynamic_axes={k: {0: "N"} for k in ("x", "refs_mean", "least", "anomaly_map")},
                          opset_version=OPSET, dynamo=False)
    traced = onnx.load_from_string(buf.getvalue())
    traced.ir_version = refs.ir_version
    model = compose.merge_models(refs, traced, io_map=[("x", "x"), ("refs_mean", "refs_mean"), ("least", "least")],
                                 prefix2="net/")
    for out in model.graph.output:       # the contract's name, not the prefixed one
        if out.name == "net/anomaly_map":
            for node in model.graph.node:
                node.output[:] = ["anomaly_map" if o == out.name else o for o in node.output]
            out.name = "anomaly_map"
    onnx.checker.check_model(model)
    helper.set_model_props(model, {"family": "discriminative", "k": str(bank.k), "bank_images": str(n),
                                   "width": str(net.width), "sigma": str(net.sigma)})
    return model


def blended(net: Any, bank: Any, scale: float) -> Any:
    """net.Blended over `net`: the template's normal scale measured here, on the bank's
    leave-one-out maps with the template family's own blur."""
    from families.discriminative.net import Blended  # noqa: PLC0415
    from families.template.bank import TemplateBank  # noqa: PLC0415

    template = TemplateBank(bank.images, bank.k, tolerance=bank.tolerance)
    return Blended(net, template.sigma, scale, normal_scale(template.leave_one_out(), floor=1e-6)).eval()


def export(checkpoint: Path, out: Path, blend: bool | None = None) -> dict[str, Any]:
    """Write out (X.onnx) and its sidecar; returns what was written and the parity check. blend:
    export net.Blended (None: as the checkpoint's config says, model.blend)."""
    from core.prepare import InputSpec  # noqa: PLC0415
    from core.registration import RegistrationSpec  # noqa: PLC0415
    from core.sidecar import check_sidecar_free, file_entry, write_sidecar  # noqa: PLC0415
    from export.onnx import relative_to  # noqa: PLC0415
    from families.template.build import difference, sidecar_info  # noqa: PLC0415
    from families.template.graph import checked_write  # noqa: PLC0415

    started = time.perf_counter()
    check_sidecar_free(out)
    net, bank, ckpt, digest = load(checkpoint)
    cfg = ckpt["config"]
    m = cfg["model"]
    scale = float(ckpt["anomaly_scale"])
    blend = bool(m.get("blend", False)) if blend is None else blend
    if blend:
        net = blended(net, bank, scale)
        scale = net_scale(net, bank, bank.others(), "cpu")
    spec = InputSpec(int(m["size"]), int(m["size"]), int(m["channels"]), "gray" if m["channels"] == 1 else "rgb",
                     RegistrationSpec.from_mapping(cfg["registration"]))
    data = build_graph(net, bank).SerializeToString()
    parity = checked_write(data, bank, out, bank.images, reference_map(net, bank), full_scale=1.0)
    model = {"family": "discriminative", "arch": "unet", "anomaly_map": "blended" if blend else "defect_probability",
             "blend": blend, "k": bank.k,
             "tolerance": bank.tolerance, "width": net.width, "sigma": net.sigma, "bank_images": int(len(bank.images)), "anomaly_scale": scale,
             "checkpoint": relative_to(checkpoint, out.parent), "checkpoint_sha256": digest, "data": str(cfg.get("data", {}).get("root")),
             "registration_failures": [f"{name}: {status}" for name, status in ckpt["data"]["failed"]]}
    info = sidecar_info(bank, spec, model,
                        f"a U-Net's defect probability from the part, the mean of its {bank.k} nearest bank images "
                        f"(64x64 L2 search) and the least {difference(bank)} to them; Gaussian blur sigma "
                        f"{net.sigma:g} px" + (f"; plus the template's map (blur sigma {net.template_sigma:g} px), each over "
                                               f"its normal p99 on the bank ({net.net_scale:.3g}, {net.template_scale:.3g})"
                                               if blend else ""),
                        int(ckpt["data"]["images"]))
    info["files"] = {checkpoint.name: file_entry(checkpoint, format="discriminative/1", role="the trained weights")} \
        if checkpoint.parent.resolve() == out.parent.resolve() else {}
    info["export"]["parity"] = parity
    info["export"]["seconds"] = round(time.perf_counter() - started, 1)
    side = write_sidecar(out, info)
    return {"onnx": out, "sidecar": side, "parity": parity, "bytes": out.stat().st_size,
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m families.discriminative.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model.pt from python -m families.discriminative.train")
    p.add_argument("--out", required=True, help="X.onnx; the sidecar X.yaml beside it")
    p.add_argument("--blend", choices=("on", "off"), help="add the template's map to the net's (default: the "
                                                           "checkpoint's model.blend)")
    args = p.parse_args(argv)
    require_extra("torch", "train", "export")
    require(p, checkpoint=args.checkpoint)
    if Path(args.out).suffix != ".onnx":
        p.error(f"--out must end with .onnx, not '{args.out}'")
    from core.sidecar import SidecarError  # noqa: PLC0415
    from families.template.bank import TemplateError  # noqa: PLC0415

    try:
        r = export(Path(args.checkpoint), Path(args.out), None if args.blend is None else args.blend == "on")
    except (TemplateError, SidecarError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    par = r["parity"]
    print(f"parity: the graph's anomaly_map against PyTorch on {par['images']} images: max |err| "
          f"{par['max_abs_err']:.2e} ({par['rel_err']:.1e} of its range); {par['ties']} image(s) at a tie")
    print(f"wrote {r['onnx']} ({r['bytes'] / 2**20:.1f} MB, {r['seconds']:.0f} s) and {r['sidecar']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
