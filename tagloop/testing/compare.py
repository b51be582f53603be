"""Comparing results that went through differently sized forward passes.

A CPU's convolution kernels may round the last bit differently for a batch of one and a batch of
several (oneDNN picks kernels by shape and by the CPU's instruction set), so scores written with six
decimals can differ by one in the last place. Everything else must be equal.
"""

from __future__ import annotations

from typing import Any


def same_results(a: Any, b: Any, tol: float = 2e-6, where: str = "") -> list[str]:
    """Differences between two JSON-like values: floats within ``tol``, everything else equal."""
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        if isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):
                return [f"{where}: keys {sorted(set(a) ^ set(b))}"]
            return [d for k in a for d in same_results(a[k], b[k], tol, f"{where}.{k}")]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                return [f"{where}: {len(a)} items vs {len(b)}"]
            return [d for i, (x, y) in enumerate(zip(a, b)) for d in same_results(x, y, tol, f"{where}[{i}]")]
        return [] if a == b else [f"{where}: {a!r} != {b!r}"]
    return [] if abs(float(a) - float(b)) <= tol else [f"{where}: {a!r} != {b!r}"]
