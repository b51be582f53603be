"""Device resolution, once for every stage: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Torch models ask torch. ONNX models and routing decisions (which files to fetch, which runtime
to pick) ask the NVIDIA driver through NVML with ctypes, so tagging with an ONNX tagger never
imports torch.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache

from .errors import GPUUnavailableError, InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> str:
    """``device`` as given when it is a device name tagloop knows, else :class:`InputError`."""
    device = str(device or "auto").strip().lower()
    if device in DEVICE_CHOICES:
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise InputError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}.")


@lru_cache(maxsize=1)
def visible_gpu_count() -> int | None:
    """NVIDIA GPUs this process may use, asked of the driver (NVML) without torch; None when unknown.

    ``CUDA_VISIBLE_DEVICES`` set to nothing or ``-1`` hides every GPU; a list names how many.
    """
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() in ("", "-1"):
        return 0
    names = ("nvml.dll",) if sys.platform == "win32" else ("libnvidia-ml.so.1", "libnvidia-ml.so")
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0 if sys.platform.startswith("linux") else None  # no driver library: no NVIDIA GPU on Linux
    try:
        if lib.nvmlInit_v2() != 0:
            return 0
        count = ctypes.c_uint(0)
        ok = lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
        lib.nvmlShutdown()
    except (AttributeError, OSError):
        return None
    if not ok:
        return 0
    n = int(count.value)
    if cvd is not None:
        n = min(n, len([x for x in cvd.split(",") if x.strip()]))
    return n


def guess_device(device: str) -> str:
    """``auto`` -> ``cuda`` when the driver shows a GPU, else ``cpu`` (no torch); others as given.

    For decisions made before a model loads (which hub files, which runtime); the runtime that
    loads the model checks again with :func:`resolve_device`.
    """
    device = check_device(device)
    if device != "auto":
        return device
    n = visible_gpu_count()
    if n is None:  # no NVML on this platform: torch knows, if it is already loaded
        torch = sys.modules.get("torch")
        return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    return "cuda" if n > 0 else "cpu"


def torch_cuda_seen() -> str:
    """What torch shows of CUDA, in words, with the likely fix (for 'no GPU' messages)."""
    try:
        import torch
    except Exception:  # pragma: no cover - torch is a dependency
        return "torch cannot be imported"
    cuda = getattr(torch.version, "cuda", None)
    if not cuda:
        return f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of torch"
    try:
        count = torch.cuda.device_count()
    except Exception:
        count = 0
    return (
        f"this torch is a CUDA {cuda} build and sees {count} GPU(s): check the NVIDIA driver "
        "(nvidia-smi) and CUDA_VISIBLE_DEVICES"
    )


def resolve_device(device: str) -> str:
    """For torch models: ``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    device = check_device(device)
    if device == "cpu":
        return device
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a dependency
        has_cuda = False
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise GPUUnavailableError(f"device {device} was asked for, but {torch_cuda_seen()}; or set device to cpu.")
    return device


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is the accelerator running out of memory (torch's, or onnxruntime's allocation failure).

    Never imports torch: an ONNX tagger's process has none.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
        if oom and isinstance(e, oom):
            return True
    text = str(e).lower()
    return "out of memory" in text or "failed to allocate memory" in text


def empty_cache() -> None:
    """Give cached accelerator memory back after an out-of-memory error (nothing without torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
