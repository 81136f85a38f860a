"""Choosing the torch device. Every entry point takes ``device``; nothing hard-codes the CPU."""

from __future__ import annotations

import torch

from .errors import FaceForgeError


def resolve_device(device: "str | torch.device | None" = "auto") -> torch.device:
    """'auto' -> CUDA when torch sees a GPU, else CPU. 'cuda' without a GPU is a clear error."""
    if isinstance(device, torch.device):
        requested = device
    else:
        name = (device or "auto").lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        requested = torch.device(name)
    if requested.type == "cuda" and not torch.cuda.is_available():
        raise FaceForgeError(
            "A CUDA device was requested but torch sees no GPU here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Choose 'Auto' or 'CPU'."
        )
    return requested
