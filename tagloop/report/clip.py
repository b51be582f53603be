"""Image similarity beside the tag scores: cosine of CLIP image embeddings (transformers).

``clip_model`` is a local folder saved by ``CLIPModel.save_pretrained`` (with its image processor
config) or a hub id such as ``openai/clip-vit-large-patch14``. Loaded once per process.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

from ..errors import ModelFileError, ModelNotFoundError

_CACHE: dict[tuple[str, str], ClipScorer] = {}
_LOCK = threading.Lock()


class ClipScorer:
    """A CLIP vision tower and its preprocessing; :meth:`embed` gives unit-length image embeddings."""

    def __init__(self, model: str | Path, device: str = "auto") -> None:
        import torch
        from transformers import CLIPImageProcessor, CLIPModel

        from ..devices import resolve_device

        spec = str(model)
        local = Path(spec).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise ModelFileError(f"`clip_model` {local} has no config.json; give a folder saved by CLIPModel.save_pretrained.")
        if not local.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") != 1):
            raise ModelNotFoundError(f"`clip_model` {spec}: no such folder here, and not a hub id (owner/name).")
        from ..generator.quiet import quiet_libraries

        source = str(local) if local.exists() else spec
        try:
            with quiet_libraries(True):
                self.model = CLIPModel.from_pretrained(source).eval()
                self.processor = CLIPImageProcessor.from_pretrained(source)
        except OSError as e:
            raise ModelNotFoundError(f"`clip_model` {spec}: {str(e).splitlines()[0]}") from None
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.source = source
        self._torch = torch

    def embed(self, images: Sequence, batch_size: int = 16):
        """Unit-length embeddings of PIL images, ``(N, D)`` float32 numpy."""
        import numpy as np

        torch = self._torch
        out = []
        for i in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[i : i + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                feats = self.model.get_image_features(pixel_values=pixels)
            if not isinstance(feats, torch.Tensor):  # some versions return a model output
                feats = feats.pooler_output if getattr(feats, "pooler_output", None) is not None else feats[0]
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out.append(feats.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def cosines(self, source, others: Sequence) -> list[float]:
        """Cosine of each of ``others`` with ``source`` (PIL images)."""
        emb = self.embed([source, *others])
        return [float(emb[0] @ e) for e in emb[1:]]


def load_clip(model: str | Path, device: str = "auto") -> ClipScorer:
    """The :class:`ClipScorer` for ``model``, loaded once per process."""
    key = (str(model), device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = ClipScorer(model, device)
        return _CACHE[key]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
