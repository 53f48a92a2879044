"""The device grammar every command line shares: `auto`, `cpu`, `cuda` or `cuda:N`.

Parsed once here; each backend reads the parsed value in its own terms (ONNX Runtime: `cpu` means
the CPU provider only and `cuda:N` the GPU of the CUDA and TensorRT providers; PyTorch: a
torch.device; TensorRT: the GPU index). A typo is a usage error (exit 2) before anything loads.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

GRAMMAR = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    kind: str               # "auto", "cpu" or "cuda"
    index: int | None = None  # the GPU with cuda:N; None: the default one

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def gpu(self) -> int:
        """The GPU index a CUDA library should use (0 unless cuda:N said otherwise)."""
        return self.index or 0


def parse_device(text: str | None) -> Device:
    """`None` or '' -> auto. Raises ValueError naming the grammar for anything else, including
    an index on auto or cpu (there is one CPU device)."""
    if text is None or text == "":
        return Device("auto")
    m = _PATTERN.fullmatch(str(text).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"--device {text!r}: choose {GRAMMAR}")
    return Device(m.group(1), None if m.group(2) is None else int(m.group(2)))


def device_arg(text: str) -> str:
    """argparse `type=`: the text back, normalized, or an ArgumentTypeError (exit 2)."""
    try:
        return str(parse_device(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--device ")) from None
