"""Networks applied to a loaded pipeline: kohya/A1111 LoRA files and textual-inversion embeddings."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .locate import list_named_files
from .recognise import GeneratorError, ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from .models import LoadedModel


# --- LoRA and textual inversion ------------------------------------------------------------------


@dataclass(frozen=True)
class LoraUse:
    """One LoRA applied to a generation: file, A1111 name, text-encoder and UNet multipliers."""

    path: Path
    name: str
    te: float = 1.0
    unet: float = 1.0


def _adapter_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", path.stem)[:40]
    return f"{stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def apply_loras(loaded: LoadedModel, loras: tuple[LoraUse, ...]) -> None:
    """Make exactly ``loras`` active on the pipeline with their weights (kohya/A1111 files via diffusers+peft)."""
    pipe = loaded.pipe
    if loras == loaded.active_loras:
        return
    if not loras:
        if loaded.adapters:
            pipe.disable_lora()
        loaded.active_loras = ()
        return
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise GeneratorError("LoRA needs the peft package: pip install peft") from e
    for use in loras:
        if use.path not in loaded.adapters:
            name = _adapter_name(use.path)
            try:
                pipe.load_lora_weights(str(use.path), adapter_name=name)
            except (ValueError, KeyError, RuntimeError, OSError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelFileError(f"LoRA {use.path.name} does not fit this {loaded.family} model: {first}") from e
            loaded.adapters[use.path] = name
    names = [loaded.adapters[u.path] for u in loras]
    weights = []
    te_parts = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    for u, name in zip(loras, names):
        w: dict[str, float] = {"unet" if loaded.family != "sd3" else "transformer": u.unet}
        for part in te_parts:
            if name in _adapters_of(getattr(pipe, part)):
                w[part] = u.te
        weights.append(w)
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=weights)
    loaded.active_loras = loras


def _adapters_of(module) -> set[str]:
    cfg = getattr(module, "peft_config", None)
    return set(cfg) if cfg else set()


def word_pattern(name: str) -> re.Pattern:
    """A prompt word equal to ``name`` (A1111 matches embeddings as whole tokens)."""
    return re.compile(r"(?<![\w\-])" + re.escape(name) + r"(?![\w\-])")


def find_embeddings(texts: Iterable[str], embedding_dirs: Iterable[Path]) -> dict[str, Path]:
    """Embedding files whose stem appears as a word in any of ``texts``."""
    files = list_named_files(embedding_dirs, exts=(".safetensors", ".pt", ".bin"))
    joined = "\n".join(texts)
    return {stem: p for stem, p in files.items() if stem in joined and word_pattern(stem).search(joined)}


def load_embeddings(loaded: LoadedModel, found: dict[str, Path]) -> None:
    """Load textual-inversion embeddings into the tokenizer(s)/text encoder(s) under their file stem."""
    if loaded.family == "sd3" or not found:
        return
    import torch

    pipe = loaded.pipe
    for name, path in found.items():
        if name in loaded.embeddings:
            continue
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if loaded.family == "sdxl":
                if not isinstance(sd, dict) or "clip_l" not in sd or "clip_g" not in sd:
                    raise ValueError("an SDXL embedding needs clip_l and clip_g tensors")
                pipe.load_textual_inversion(sd["clip_l"], token=name, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(
                    sd["clip_g"], token=name, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
                )
                vectors = sd["clip_l"].shape[0] if sd["clip_l"].ndim == 2 else 1
            else:
                tensor = _embedding_tensor(sd)
                pipe.load_textual_inversion(tensor, token=name)
                vectors = tensor.shape[0] if tensor.ndim == 2 else 1
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"embedding {path.name} does not fit this {loaded.family} model: {first}") from e
        loaded.embeddings[name] = (path, vectors)


def _embedding_tensor(sd: Any):
    if hasattr(sd, "ndim"):
        return sd
    if "emb_params" in sd:
        return sd["emb_params"]
    if "string_to_param" in sd:
        return next(iter(sd["string_to_param"].values()))
    if len(sd) == 1:
        return next(iter(sd.values()))
    raise ValueError("no emb_params or string_to_param tensor")


def expand_embeddings(text: str, embeddings: dict[str, tuple[Path, int]]) -> str:
    """Multi-vector embeddings take one token per vector (``name name_1 ...``), as diffusers registers them."""
    for name, (_, n) in embeddings.items():
        if n > 1:
            text = word_pattern(name).sub(" ".join([name] + [f"{name}_{i}" for i in range(1, n)]), text)
    return text


def short_file_hash(path: Path, digits: int = 12) -> str:
    """First ``digits`` hex of a (small) file's SHA-256: A1111's TI hash."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:digits]
