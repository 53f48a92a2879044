"""The export module: preprocessing + encoder + an explicit backward + attention, in plain tensor ops.

(Over 400 lines on purpose: the forward steps and their backward steps are one unit; split, a
step's forward and its backward would drift apart, which is what the parity check exists to catch.)

PyTorch's ONNX exporters cannot trace autograd (pytorch#15644; pytorch#89675 even freezes the
gradients as constants), so the vector-Jacobian product ds/dA that the attention needs (paper
Eq. 2-3) is written out here op by op, in reverse order of the forward:

    score s(mu, logvar)   -> (ds/dmu, ds/dlogvar)      analytic, `score_cotangents`
    logvar head           -> chain through the soft clamp L tanh(raw / L) of VAE.heads
    Linear  y = x W^T + b -> g_x = g_y W               MatMul with the same weight
    ReLU                  -> g * (y > 0)               the forward's own mask
    Conv2d                -> conv_transpose2d(g, W)    output_padding restores the input size
    BatchNorm2d (eval)    -> g * gamma / sqrt(var + eps)
    BasicBlock            -> ReLU mask, branch backward + shortcut backward (sum)

The same module is what the runtime's PyTorch backend runs and what the ONNX graph is traced
from, and tests compare it with `training.inference.reference_outputs` (autograd). The final
attention, the anomaly map and the reconstruction error are the very functions the reference
uses (`training.attention.attention_map`, `training.maps.AnomalyMap`, `training.maps.recon_error`).

Batching of cotangents: with `per_dim` the backward carries R = 1 + D cotangent vectors per
image (the score's, then one per latent dimension) as one batch of N*R; forward tensors saved
for masks stay [N, ...] and broadcast over R. One backward pass gives `gradients` and `alpha`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from training.attention import SCORES, attention_map, channel_weights
from training.checkpoint import load_model_hashed
from training.inference import inference_settings
from training.maps import AnomalyMap, recon_error
from training.models import VAE
from training.models.vae import LOGVAR_LIMIT

#: Output names in graph order; recon_error and alpha only when present.
BASE_OUTPUTS = ("mu", "logvar", "activations", "gradients", "attention", "anomaly_map")

#: Anomaly map kinds built on the attention: a graph with such a map needs the backward.
ATTENTION_MAPS = ("attention", "fusion")

#: One line per output, in the contract's order, written into the ONNX graph (doc_string) and the docs.
OUTPUT_DOCS = {
    "mu": "[N, D] float32: mean of q(z|x), the latent code",
    "logvar": "[N, D] float32: log-variance of q(z|x)",
    "activations": "[N, K, h, w] float32: output A of the target layer",
    "gradients": "[N, K, h, w] float32: ds/dA, vector-Jacobian product of the latent score s",
    "attention": "[N, 1, H, W] float32: ReLU(sum_k GAP(ds/dA_k) A_k) bilinearly upsampled, raw values (Eq. 2-3)",
    "anomaly_map": "[N, 1, H, W] float32: the map thresholds apply to (attention, recon_error[_blur] or fusion)",
    "recon_error": "[N, 1, H, W] float32: |x - x_hat| averaged over channels, x in [0, 1]",
    "alpha": "[N, D, K] float32: per-dimension channel weights GAP(d mu_i / dA_k)",
}


class ExportError(ValueError):
    """A model or setting the export graph cannot express; the message says what to choose instead."""


_OUTPUT_TYPES: dict[tuple[str, ...], type] = {}


def line_outputs(outputs: Sequence[str], per_dim: bool = False, recon: bool | None = None) -> list[str]:
    """The outputs a line graph is asked for, in the contract's order; ExportError for an unknown
    name, an empty list, or a flag that asks for an output the list leaves out."""
    asked = set(outputs)
    unknown = sorted(asked - set(OUTPUT_DOCS))
    if unknown or not asked:
        raise ExportError(f"unknown output(s) {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(OUTPUT_DOCS)}")
    for flag, name in ((per_dim, "alpha"), (recon, "recon_error")):
        if flag and name not in asked:
            raise ExportError(f"{'per_dim' if name == 'alpha' else 'recon'} asks for '{name}', which the outputs "
                              f"leave out: add it to them")
    return [n for n in OUTPUT_DOCS if n in asked]


def output_type(names: Sequence[str]) -> type:
    """The NamedTuple class for a list of output names (one class per distinct list)."""
    key = tuple(names)
    if key not in _OUTPUT_TYPES:
        _OUTPUT_TYPES[key] = NamedTuple("ExportOutputs", [(n, torch.Tensor) for n in key])  # type: ignore[misc]
    return _OUTPUT_TYPES[key]


def score_cotangents(mu: torch.Tensor, logvar: torch.Tensor, score: str, normal_mu: torch.Tensor,
                     normal_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ds/dmu, ds/dlogvar) of `training.attention.latent_score`, written out because the graph has
    no autograd; None for a score that does not depend on logvar (sum_mu).

    difference: s = sum 0.5 (mu - m)^2 / v + 0.5 log(2 pi v), v = var_n + exp(logvar), so
      ds/dmu = (mu - m) / v ;  ds/dlogvar = (0.5 / v - 0.5 (mu - m)^2 / v^2) * exp(logvar).
    """
    if score == "sum_mu":
        return torch.ones_like(mu), None
    if score == "difference":
        e = torch.exp(logvar)
        v = normal_var + e
        diff = mu - normal_mu
        # written with tensor/tensor Div only: `0.5 / v` would export as Reciprocal, which older
        # TensorRT parsers reject
        return diff / v, (0.5 - 0.5 * diff * diff / v) * e / v
    raise ExportError(f"unknown score '{score}'; choose one of {SCORES}")


def _masked(g: torch.Tensor, y: torch.Tensor, r: int, shape: tuple[int, ...]) -> torch.Tensor:
    """ReLU backward: g [N*R, *shape] times the mask (y > 0) of the forward output y [N, *shape]."""
    mask = (y > 0).to(g.dtype)
    if r == 1:
        return g * mask
    return (g.reshape((-1, r) + shape) * mask.unsqueeze(1)).reshape((-1,) + shape)


class _Step:
    """One op after the target layer. forward returns (output, saved); backward maps the output
    cotangent to the input cotangent using what forward saved. Shapes (without the batch) are
    recorded on the first call, which ExportModule makes at construction outside any tracing,
    so the traced graph carries static shapes (only the batch is dynamic)."""

    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()

    def _record(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not self.out_shape:
            self.in_shape, self.out_shape = tuple(map(int, x.shape[1:])), tuple(map(int, y.shape[1:]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def backward(self, g: torch.Tensor, saved: Any, r: int) -> torch.Tensor:
        raise NotImplementedError


class _Conv(_Step):
    def __init__(self, conv: nn.Conv2d) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ExportError(f"conv with padding {conv.padding!r}/{conv.padding_mode} has no explicit backward here")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y = self.conv(x)
        self._record(x, y)
        return y, None

    def backward(self, g: torch.Tensor, saved: Any, r: int) -> torch.Tensor:
        c = self.conv
        # conv_transpose maps out -> (out-1)*s - 2p + d(k-1) + 1; a strided conv dropped the
        # remainder rows/cols of its input, output_padding adds them back (their gradient is 0).
        pad = tuple(
            i - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for i, o, s, p, d, k in zip(self.in_shape[1:], self.out_shape[1:], c.stride, c.padding,
                                        c.dilation, c.kernel_size))
        return F.conv_transpose2d(g, c.weight, None, c.stride, c.padding, pad, c.groups, c.dilation)


class _BatchNorm(_Step):
    def __init__(self, bn: nn.BatchNorm2d) -> None:
        if not bn.track_running_stats:
            raise ExportError("BatchNorm without running statistics has no fixed eval-mode backward")
        self.bn = bn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y = self.bn(x)
        self._record(x, y)
        return y, None

    def backward(self, g: torch.Tensor, saved: Any, r: int) -> torch.Tensor:
        bn = self.bn
        # eval BN is affine per channel: y = (x - m) * gamma / sqrt(v + eps) + beta
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        return g * scale.reshape(1, -1, 1, 1)


class _ReLU(_Step):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y = torch.relu(x)  # not the module: torchvision's ReLU is in-place and would clobber x
        self._record(x, y)
        return y, y

    def backward(self, g: torch.Tensor, saved: Any, r: int) -> torch.Tensor:
        return _masked(g, saved, r, self.out_shape)


class _Residual(_Step):
    """branch(x) + shortcut(x) (the BasicBlock's final ReLU is a separate step)."""

    def __init__(self, branch: list[_Step], shortcut: list[_Step]) -> None:
        self.branch, self.shortcut = branch, shortcut

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        b, sb = run_forward(self.branch, x)
        s, ss = run_forward(self.shortcut, x)
        y = b + s
        self._record(x, y)
        return y, (sb, ss)

    def backward(self, g: torch.Tensor, saved: Any, r: int) -> torch.Tensor:
        sb, ss = saved
        return run_backward(self.branch, sb, g, r) + run_backward(self.shortcut, ss, g, r)


def run_forward(steps: list[_Step], x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
    saved = []
    for s in steps:
        x, sv = s.forward(x)
        saved.append(sv)
    return x, saved


def run_backward(steps: list[_Step], saved: list[Any], g: torch.Tensor, r: int) -> torch.Tensor:
    for s, sv in zip(reversed(steps), reversed(saved)):
        g = s.backward(g, sv, r)
    return g


def steps_for(module: nn.Module) -> list[_Step]:
    """The explicit-backward steps of an encoder module; ExportError for what has none."""
    if isinstance(module, nn.Conv2d):
        return [_Conv(module)]
    if isinstance(module, nn.BatchNorm2d):
        return [_BatchNorm(module)]
    if isinstance(module, nn.ReLU):
        return [_ReLU()]
    if isinstance(module, nn.Identity):
        return []
    if isinstance(module, nn.Sequential):
        return [s for m in module for s in steps_for(m)]
    if isinstance(module, BasicBlock):
        branch = [*steps_for(module.conv1), *steps_for(module.bn1), *steps_for(module.relu),
                  *steps_for(module.conv2), *steps_for(module.bn2)]
        shortcut = steps_for(module.downsample) if module.downsample is not None else []
        return [_Residual(branch, shortcut), _ReLU()]
    # MaxPool (ResNet stem) would need an index scatter that TensorRT lacks (MaxUnpool): targets
    # are therefore after it, which is where the attention is meaningful anyway.
    raise ExportError(f"no explicit backward through {type(module).__name__}")


def export_layers(model: VAE) -> list[str]:
    """Encoder layers usable as targets: every later layer has an explicit backward."""
    names = [n for n, _ in model.encoder.named_children()]
    ok = []
    for i, name in enumerate(names):
        try:
            for later in names[i + 1:]:
                steps_for(getattr(model.encoder, later))
        except ExportError:
            continue
        ok.append(name)
    return ok


class _ScoreCotangent(nn.Module):
    """Named submodule so that the exported nodes carry the scope '/score_grad/' (TensorRT keeps it
    fp32): the score's exp/div and the chain through the logvar soft clamp, whose 1 - (logvar/L)^2
    cancels to nothing in fp16 where |logvar| nears L."""

    def __init__(self, score: str) -> None:
        super().__init__()
        self.score = score

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor, normal_mu: torch.Tensor,
                normal_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ds/dmu, ds/draw) with raw the logvar head's output before the clamp."""
        dmu, dlv = score_cotangents(mu, logvar, self.score, normal_mu, normal_var)
        if dlv is None:
            return dmu, None
        # logvar = L tanh(raw / L) (VAE.heads): d logvar / d raw = 1 - (logvar / L)^2
        return dmu, dlv * (1.0 - (logvar / LOGVAR_LIMIT) ** 2)


class _Attention(nn.Module):
    """Named submodule ('/attention/' in the graph) around the one attention definition."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return attention_map(acts, grads, self.size)


class ExportModule(nn.Module):
    """uint8 image [N, H, W, C] -> NamedTuple of the contract's outputs (see OUTPUT_DOCS), without
    autograd: the graph both ONNX export and the runtime's PyTorch backend run."""

    def __init__(self, model: VAE, layer: str, score: str, anomaly_map: str, blur_sigma: float,
                 per_dim: bool = False, recon: bool | None = None, outputs: Sequence[str] | None = None) -> None:
        super().__init__()
        if score not in SCORES:
            raise ExportError(f"unknown score '{score}'; choose one of {SCORES}")
        heads = (model.fc, model.fc_mu, model.fc_logvar)
        if type(model).heads is not VAE.heads or not all(isinstance(h, nn.Linear) for h in heads):
            # the backward below assumes Linear fc and heads and the soft logvar clamp of VAE.heads
            raise ExportError(f"model arch '{model.config.get('arch')}' has no export graph "
                              "(the one-class VAEs mnist, ucsd and resnet18 do)")
        self.model = model
        super().train(False)  # eval BatchNorm: the backward below relies on it
        self.score = score
        self.score_grad = _ScoreCotangent(score)
        self.amap = AnomalyMap(anomaly_map, float(blur_sigma))
        names = line_outputs(outputs, per_dim, recon) if outputs is not None else \
            [*BASE_OUTPUTS, *(["recon_error"] if bool(recon) or self.amap.needs_decoder else []),
             *(["alpha"] if per_dim else [])]
        self.output_names: tuple[str, ...] = tuple(names)
        self.per_dim = "alpha" in names
        self.with_recon = "recon_error" in names
        # a line graph computes only what its outputs need: the backward for the attention (and the
        # maps built on it), the decoder for the reconstruction maps (as in the reference, whose
        # decoder runs when the map needs it or recon_error is asked for)
        wants_map = "anomaly_map" in names
        self.needs_backward = bool({"gradients", "attention", "alpha"} & set(names)) or (
            wants_map and self.amap.kind in ATTENTION_MAPS)
        self.decodes = self.with_recon or (wants_map and self.amap.needs_decoder)
        self.layer = layer[len("encoder."):] if layer.startswith("encoder.") else layer
        children = [n for n, _ in model.encoder.named_children()]
        if self.layer not in children:
            raise ExportError(f"unknown layer '{layer}'; choose one of {export_layers(model)}")
        i = children.index(self.layer)
        self._before = children[:i + 1]
        try:
            self._after = [s for n in children[i + 1:] for s in steps_for(getattr(model.encoder, n))]
        except ExportError as e:
            raise ExportError(f"layer '{layer}': {e}; choose one of {export_layers(model)}") from None
        if not isinstance(model.fc_act, (nn.ReLU, nn.Identity)):
            raise ExportError(f"no explicit backward through fc_act {type(model.fc_act).__name__}")
        cfg = model.config
        self.height = self.width = int(cfg["size"])
        self.channels = int(cfg.get("channels", 1))
        self.Outputs = output_type(names)
        self.attention = _Attention((self.height, self.width))
        with torch.no_grad():  # records the static shapes of every step (see _Step)
            dummy = torch.zeros(1, self.height, self.width, self.channels, dtype=torch.uint8,
                                device=model.normal_mu.device)
            acts = self.features(dummy)[1]
            self.feature_shape = tuple(map(int, run_forward(self._after, acts)[0].shape[1:]))
            self.activation_shape = tuple(map(int, acts.shape[1:]))

    def train(self, mode: bool = True) -> "ExportModule":
        # inference only: the backward assumes eval BatchNorm, so training mode is refused
        if mode:
            raise ExportError("ExportModule is inference-only (eval BatchNorm); it cannot be put in train mode")
        return super().train(False)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocess and run the encoder up to the target: (x in [0, 1], activations)."""
        x01, x = self.model.preprocess(image)
        for name in self._before:
            x = getattr(self.model.encoder, name)(x)
        return x01, x

    def explain(self, x01: torch.Tensor, acts: torch.Tensor) -> NamedTuple:
        """Everything downstream of the target's activations: latent code, explicit backward,
        attention, maps (split from `features` so that it can also be run on activations that
        come from elsewhere, e.g. to study another backend's numerics)."""
        m = self.model
        y, saved = run_forward(self._after, acts)
        h_pre = m.fc(torch.flatten(y, 1))
        mu, logvar = m.heads(m.fc_act(h_pre))
        grads, att, alpha = (self.backward_pass(mu, logvar, h_pre, acts, saved) if self.needs_backward
                             else (None, None, None))
        recon = m.decoder(mu) if self.decodes else None
        err = recon_error(x01, recon) if self.with_recon else None
        amap = self.amap(att, x01, recon, m.map_scale) if "anomaly_map" in self.output_names else None
        out = {"mu": mu, "logvar": logvar, "activations": acts, "gradients": grads, "attention": att,
               "anomaly_map": amap, "recon_error": err, "alpha": alpha}
        return self.Outputs(*(out[n] for n in self.output_names))

    def backward_pass(self, mu: torch.Tensor, logvar: torch.Tensor, h_pre: torch.Tensor, acts: torch.Tensor,
                      saved: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The explicit vector-Jacobian product from the latent score back to the target layer:
        (gradients, attention, alpha or None)."""
        m = self.model
        d = m.latent
        r = 1 + d if self.per_dim else 1
        relu_head = isinstance(m.fc_act, nn.ReLU)
        # sum_mu: ds/dmu = 1 for every image, so the cotangent rows are constants ([1, R, D]) and,
        # without an fc ReLU, so is the whole fc-head product: the export folds it instead of
        # re-reading the 32768 x 1024 fc weight per image (half the fc head's cost on a CPU)
        if self.score == "sum_mu":
            dmu, dlv = torch.ones(1, d, dtype=mu.dtype, device=mu.device), None  # = score_cotangents'
            lead = torch.ones(1, 1, 1, dtype=mu.dtype, device=mu.device)
        else:
            dmu, dlv = self.score_grad(mu, logvar, m.normal_mu, m.normal_var)
            lead = torch.ones_like(mu[:, :1]).unsqueeze(-1)  # [N, 1, 1]: carries the dynamic batch
        dmu = dmu.unsqueeze(1)  # [B, 1, D], B = 1 (constant rows) or N
        dlv = dlv.unsqueeze(1) if dlv is not None else None
        if self.per_dim:  # rows 1..D: the cotangent e_i of mu_i, for alpha
            eye = torch.eye(d, dtype=mu.dtype, device=mu.device).unsqueeze(0) * lead  # [B, D, D]
            dmu = torch.cat([dmu, eye], 1)  # [B, R, D]
            if dlv is not None:
                dlv = torch.cat([dlv, torch.zeros_like(eye)], 1)
        gh = torch.matmul(dmu, m.fc_mu.weight)  # [B, R, hidden]
        if dlv is not None:  # already w.r.t. the pre-clamp head output (_ScoreCotangent)
            gh = gh + torch.matmul(dlv, m.fc_logvar.weight)
        if relu_head:
            gh = gh * (h_pre > 0).to(gh.dtype).unsqueeze(1)  # now [N, R, hidden]
        gflat = torch.matmul(gh, m.fc.weight)  # [B, R, K*h*w]
        if self.score == "sum_mu" and not relu_head:
            gflat = gflat * torch.ones_like(mu[:, :1]).unsqueeze(-1)  # the constant, for each image
        g = run_backward(self._after, saved, gflat.reshape((-1,) + self.feature_shape), r)

        if self.per_dim:
            g = g.reshape((-1, r) + self.activation_shape)
            alpha = channel_weights(g[:, 1:].reshape((-1,) + self.activation_shape)).reshape(-1, d, self.activation_shape[0])
            grads = g[:, 0]
        else:
            alpha, grads = None, g
        return grads, self.attention(acts, grads), alpha

    def forward(self, image: torch.Tensor) -> NamedTuple:
        with torch.no_grad():  # the backward is explicit; autograd would only cost memory
            return self.explain(*self.features(image))


def build_export_module(checkpoint_path: str | Path, layer: str | None = None, score: str | None = None,
                        per_dim: bool = False, recon: bool | None = None,
                        map_location: str | torch.device = "cpu",
                        outputs: Sequence[str] | None = None) -> tuple[ExportModule, dict[str, Any]]:
    """ExportModule for a checkpoint; defaults come from its `inference` config section; `outputs`
    (a line graph) computes only those (see `line_outputs`).

    settings: layer, score, anomaly_map, blur_sigma (effective), per_dim, recon (whether the
    decoder is in the graph), outputs, checkpoint (path), checkpoint_sha256 (of the bytes the
    module was built from), model (its config)."""
    model, config, digest = load_model_hashed(checkpoint_path, map_location)
    settings = inference_settings(config, layer=layer, score=score)
    module = ExportModule(model, settings["layer"], settings["score"], settings["anomaly_map"],
                          float(settings["blur_sigma"]), per_dim, recon, outputs)
    trained = config["inference"]
    fitted = (module.layer, module.score) == (trained["layer"].removeprefix("encoder."), trained["score"])
    settings.update(layer=module.layer, blur_sigma=float(settings["blur_sigma"]), per_dim=module.per_dim,
                    recon=module.with_recon, outputs=list(module.output_names),
                    checkpoint=str(checkpoint_path), checkpoint_sha256=digest, model=dict(config["model"]),
                    # the attention's 99th percentile on the normal training images (training.stats),
                    # fitted for the trained layer and score only: overlays draw the attention on a
                    # fixed scale with it, so a good part does not light up as a bad one does
                    attention_scale=float(model.map_scale[0]) if fitted else None,
                    anomaly_scale=normal_scale(module.amap.kind, model, fitted),
                    # host-side registration the model was trained with (core.registration), fitted
                    # on its training images; none for checkpoints older than registration
                    registration=config.get("registration"))
    return module, settings


def normal_scale(kind: str, model: VAE, fitted: bool) -> float | None:
    """The anomaly map's 99th percentile on the normal training images where training.stats measured
    it (the blurred error; the attention at the trained layer and score): the overlay's fixed colour
    scale before calibration. None for other kinds (their pictures say 'per image')."""
    if kind == "recon_error_blur":
        return float(model.map_scale[1])
    if kind == "attention" and fitted:
        return float(model.map_scale[0])
    return None


def output_shapes(module: ExportModule) -> dict[str, list[int | str]]:
    """Each output's shape with 'N' for the dynamic batch (for the sidecar and docs)."""
    h, w = module.height, module.width
    d = module.model.latent
    shapes: dict[str, list[int | str]] = {
        "mu": ["N", d], "logvar": ["N", d], "activations": ["N", *module.activation_shape],
        "gradients": ["N", *module.activation_shape], "attention": ["N", 1, h, w], "anomaly_map": ["N", 1, h, w],
        "recon_error": ["N", 1, h, w], "alpha": ["N", d, module.activation_shape[0]]}
    return {n: shapes[n] for n in module.output_names}


__all__ = ["ATTENTION_MAPS", "BASE_OUTPUTS", "OUTPUT_DOCS", "ExportError", "ExportModule", "build_export_module",
           "export_layers", "line_outputs", "output_shapes", "output_type", "score_cotangents", "steps_for"]
