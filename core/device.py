"""Choosing the torch device. Every entry point takes ``device``; nothing hard-codes the CPU."""

from __future__ import annotations

import torch

from .errors import FaceForgeError


_threads_configured = False


def configure_cpu_threads() -> int:
    """Pick torch's CPU thread count once per process.

    FACEFORGE_TORCH_THREADS wins. Otherwise, on machines with 2 cores or fewer, 1 thread: the
    engine's tensors are small, so a second thread gains ~5% on a quiet machine, while OpenMP's
    spin-waiting makes it many times slower as soon as anything else (Blender, mediapipe,
    another process) wants a core (measured: 24 tracked frames 2.6 s vs 47 s)."""
    global _threads_configured
    if not _threads_configured:
        _threads_configured = True
        import os
        env = os.environ.get("FACEFORGE_TORCH_THREADS")
        if env and env.isdigit() and int(env) > 0:
            torch.set_num_threads(int(env))
        elif (os.cpu_count() or 1) <= 2:
            torch.set_num_threads(1)
    return torch.get_num_threads()


def resolve_device(device: "str | torch.device | None" = "auto") -> torch.device:
    """'auto' -> CUDA when torch sees a GPU, else CPU. 'cuda' without a GPU is a clear error.
    Every pipeline starts here, so this is also where the CPU thread count is settled."""
    configure_cpu_threads()
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
