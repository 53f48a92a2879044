"""The template map (families.template.bank) as an ONNX graph, so that ONNX Runtime and TensorRT run a
template model as they run an exported VAE, under the same contract: input `image` uint8
[N, H, W, C] (registered on the host), output `anomaly_map` float32 [N, 1, H, W].

    search copies   AveragePool of f x f blocks (f = H / 64): the bank's float block means
    nearest k       squared distances to the bank's copies (a constant), TopK of their negation
    the map         Gather the k bank images (fp16: 0..255 exactly), min |difference| over them,
                    max over channels, / 255, the Gaussian blur of cv2.GaussianBlur (its own kernel,
                    reflect-101 padding) as two 1-D convolutions
Opset 17 (reduce axes as attributes: constants for TensorRT); the graph is checked against the
numpy bank on the bank's own images and noise before it is written (`template_graph`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.files import atomic_write
from families.template.bank import SEARCH, TemplateBank, TemplateError

OPSET = 17
PARITY_TOL = 1e-4  # x the map's range: float summation order only, the same references chosen
TIE_GAP = 1e-4     # relative distance gap under which two bank images are equally near


def _onnx() -> Any:
    try:
        import onnx  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("writing the template as ONNX needs the onnx package: pip install onnx "
                          "(or pip install -e '.[train]'), or write the bank alone with --out X.npz") from e
    return onnx


def gaussian_kernel(sigma: float) -> np.ndarray:
    """cv2.GaussianBlur's own 1-D kernel for a float image: size round(8 sigma + 1) | 1."""
    size = int(round(sigma * 4 * 2 + 1)) | 1
    return cv2.getGaussianKernel(size, sigma, cv2.CV_32F).ravel().astype(np.float32)


def reference_nodes(bank: TemplateBank) -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) from the uint8 input `image` to `x` (float NHWC, gray levels), `refs`
    (the k nearest bank images, float [N, k, H, W, C]) and `least` (per pixel the least |difference|
    to them, or with the bank's tolerance the least distance to their local ranges, worst channel,
    float [N, 1, H, W], gray levels): TemplateBank.references as a graph.
    The template map and the learned families that compare a part with its references build on it."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    n_bank, h, w, c = bank.images.shape
    if h % SEARCH or w % SEARCH or h // SEARCH != w // SEARCH:
        raise ValueError(f"template ONNX: the model size {h}x{w} must be a square multiple of {SEARCH}")
    f = h // SEARCH
    init = [numpy_helper.from_array(bank.small.astype(np.float32)[None], "bank_small"),      # [1, B, D]
            numpy_helper.from_array(bank.images.astype(np.float16), "bank_images"),          # [B, H, W, C]
            numpy_helper.from_array(np.array([bank.k], np.int64), "k"),
            numpy_helper.from_array(np.array([-1, 1, SEARCH * SEARCH * c], np.int64), "query_shape"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["x_nchw"], ["small_nchw"], kernel_shape=[f, f], strides=[f, f]),
        helper.make_node("Transpose", ["small_nchw"], ["small_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["small_nhwc", "query_shape"], ["query"]),                 # [N, 1, D]
        helper.make_node("Sub", ["query", "bank_small"], ["delta"]),                            # [N, B, D]
        helper.make_node("ReduceSumSquare", ["delta"], ["d2"], axes=[2], keepdims=0),           # [N, B]
        helper.make_node("Neg", ["d2"], ["closeness"]),
        helper.make_node("TopK", ["closeness", "k"], ["_top", "nearest"], axis=1, largest=1, sorted=1),
        helper.make_node("Gather", ["bank_images", "nearest"], ["refs16"], axis=0),            # [N, k, H, W, C]
        helper.make_node("Cast", ["refs16"], ["refs"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["x", "axis1"], ["x5"]),
    ]
    if bank.tolerance:
        # each reference's local range over (2t + 1)^2 pixels (MaxPool ignores its padding, as
        # cv2.dilate / erode ignore the border); the difference is how far x lies outside it
        t, side = bank.tolerance, 2 * bank.tolerance + 1
        init += [numpy_helper.from_array(np.array([-1, h, w, c], np.int64), "refs_flat_shape"),
                 numpy_helper.from_array(np.array([-1, bank.k, h, w, c], np.int64), "refs_shape")]
        pool = {"kernel_shape": [side, side], "strides": [1, 1], "pads": [t, t, t, t]}
        nodes += [
            helper.make_node("Reshape", ["refs", "refs_flat_shape"], ["refs_flat"]),
            helper.make_node("Transpose", ["refs_flat"], ["refs_nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("MaxPool", ["refs_nchw"], ["high_nchw"], **pool),
            helper.make_node("Neg", ["refs_nchw"], ["neg_refs"]),
            helper.make_node("MaxPool", ["neg_refs"], ["neg_low_nchw"], **pool),
            helper.make_node("Neg", ["neg_low_nchw"], ["low_nchw"]),
            helper.make_node("Transpose", ["high_nchw"], ["high_flat"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["low_nchw"], ["low_flat"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["high_flat", "refs_shape"], ["high"]),
            helper.make_node("Reshape", ["low_flat", "refs_shape"], ["low"]),
            helper.make_node("Sub", ["x5", "high"], ["above"]),
            helper.make_node("Sub", ["low", "x5"], ["below"]),
            helper.make_node("Max", ["above", "below"], ["outside"]),
            helper.make_node("Relu", ["outside"], ["absdiff"]),
        ]
    else:
        nodes += [helper.make_node("Sub", ["refs", "x5"], ["diff"]),
                  helper.make_node("Abs", ["diff"], ["absdiff"])]
    nodes += [
        helper.make_node("ReduceMin", ["absdiff"], ["least_c"], axes=[1], keepdims=0),         # [N, H, W, C]
        helper.make_node("ReduceMax", ["least_c"], ["worst_channel"], axes=[3], keepdims=1),   # [N, H, W, 1]
        helper.make_node("Transpose", ["worst_channel"], ["least"], perm=[0, 3, 1, 2]),
    ]
    return nodes, init


def blur_nodes(source: str, sigma: float, out: str) -> tuple[list[Any], list[Any]]:
    """cv2.GaussianBlur of `source` [N, 1, H, W] at `sigma` as two 1-D convolutions with
    reflect-101 padding (cv2's default border), named `out`."""
    from onnx import helper, numpy_helper  # noqa: PLC0415

    if sigma <= 0:
        return [helper.make_node("Identity", [source], [out])], []
    kernel = gaussian_kernel(sigma)
    r = len(kernel) // 2
    init = [numpy_helper.from_array(np.array([0, 0, r, r, 0, 0, r, r], np.int64), f"{out}_pads"),
            numpy_helper.from_array(kernel.reshape(1, 1, -1, 1), f"{out}_v"),
            numpy_helper.from_array(kernel.reshape(1, 1, 1, -1), f"{out}_h")]
    nodes = [helper.make_node("Pad", [source, f"{out}_pads"], [f"{out}_padded"], mode="reflect"),
             helper.make_node("Conv", [f"{out}_padded", f"{out}_v"], [f"{out}_rows"]),
             helper.make_node("Conv", [f"{out}_rows", f"{out}_h"], [out])]
    return nodes, init


def finish(nodes: list[Any], init: list[Any], name: str, image_shape: tuple[int, int, int],
           props: dict[str, str], outputs: dict[str, list[Any]] | None = None) -> Any:
    """The checked onnx.ModelProto of `nodes` from `image` (uint8 [N, H, W, C]) to `outputs`
    (name -> shape; default the contract's `anomaly_map` [N, 1, H, W]), all float."""
    onnx = _onnx()
    from onnx import TensorProto, helper  # noqa: PLC0415

    h, w, c = image_shape
    outputs = outputs or {"anomaly_map": ["N", 1, h, w]}
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", h, w, c])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, shape) for k, shape in outputs.items()], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vae-inspect")
    model.ir_version = 8  # readable by every ONNX Runtime and TensorRT 10 parser of opset 17
    onnx.checker.check_model(model)
    helper.set_model_props(model, props)
    return model


def build_graph(bank: TemplateBank) -> Any:
    """The onnx.ModelProto of `bank`'s anomaly map."""
    _onnx()
    from onnx import helper, numpy_helper  # noqa: PLC0415

    nodes, init = reference_nodes(bank)
    init.append(numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"))
    nodes.append(helper.make_node("Mul", ["least", "inv255"], ["raw"]))
    blur, blur_init = blur_nodes("raw", bank.sigma, "anomaly_map")
    return finish(nodes + blur, init + blur_init, "template_map", bank.images.shape[1:],
                  {"family": "template", "k": str(bank.k), "sigma": str(bank.sigma), "tolerance": str(bank.tolerance),
                   "bank_images": str(len(bank.images))})


def tied(bank: TemplateBank, images: np.ndarray) -> np.ndarray:
    """bool [N]: the k-th and (k+1)-th nearest bank images are equally near (relative gap under
    TIE_GAP), so which of them is among the k nearest is a float summation-order accident."""
    if bank.k >= len(bank.images):
        return np.zeros(len(images), bool)
    _, rms = bank.nearest(images, bank.k + 1)
    d2 = rms.astype(np.float64) ** 2
    return (d2[:, bank.k] - d2[:, bank.k - 1]) <= TIE_GAP * np.maximum(d2[:, bank.k], 1e-12)


def parity(model_bytes: bytes, bank: TemplateBank, images: np.ndarray,
           reference: Callable[[np.ndarray], np.ndarray] | None = None, full_scale: float = 0.0) -> dict[str, Any]:
    """ONNX Runtime (CPU) against the reference computation of the map (default the numpy bank's)
    on `images`: max |err| relative to the map's range (at least `full_scale`: a map that is a
    probability has a scale of 1 even where an untrained net's range is a thousandth) over the
    images whose nearest set is not a tie, and how many images differ at a tie (another of two
    equally near references chosen: reported, as export.check reports ReLU kinks)."""
    from core import ort  # noqa: PLC0415

    import onnxruntime  # noqa: PLC0415

    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    sess = onnxruntime.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    got = np.concatenate([ort.run(sess, images[i:i + 8])["anomaly_map"] for i in range(0, len(images), 8)])
    want = (reference or bank.anomaly_map)(images)
    span = max(float(want.max() - want.min()), full_scale) or 1.0
    err = np.abs(got - want).reshape(len(images), -1).max(1)
    differ = err > PARITY_TOL * span
    excused = differ & tied(bank, images)
    checked = err[~excused]
    worst = float(checked.max()) if checked.size else 0.0
    return {"images": int(len(images)), "max_abs_err": worst, "rel_err": worst / span,
            "nearest_differ": int(differ.sum()), "ties": int(excused.sum())}


def checked_write(data: bytes, bank: TemplateBank, out: Path, registered: np.ndarray,
                  reference: Callable[[np.ndarray], np.ndarray] | None = None, full_scale: float = 0.0) -> dict[str, Any]:
    """Check a graph built on `bank` against its reference on the registered training images, as
    many with sensor-like noise (parts it has not seen, nearly) and as many of pure noise (every
    reference about as far: ties are likely and must be told apart), and write it atomically when
    every image agrees within PARITY_TOL x range. Raises TemplateError when one does not."""
    rng = np.random.default_rng(0)
    n = min(len(registered), 16)
    noisy = (registered[:n].astype(np.int16) + rng.integers(-12, 13, registered[:n].shape)).clip(0, 255)
    noise = rng.integers(0, 256, (n,) + registered.shape[1:], np.uint8)
    check = parity(data, bank, np.concatenate([registered[:n], noisy.astype(np.uint8), noise]), reference, full_scale)
    if check["rel_err"] > PARITY_TOL:
        raise TemplateError(f"{out}: the graph's map differs from its reference by {check['rel_err']:.1e} of its range "
                            f"on {check['nearest_differ'] - check['ties']} of {check['images']} images (not at a tie); "
                            "not written")
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return check


def template_graph(bank: TemplateBank, out: Path, registered: np.ndarray) -> dict[str, Any]:
    """Build the template graph, check it against the numpy bank and write it (checked_write)."""
    return checked_write(build_graph(bank).SerializeToString(), bank, out, registered)
