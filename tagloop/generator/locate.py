"""Locating models: a file, a diffusers folder, a name in the user's A1111/ComfyUI folders or a hub id;
VAE and LoRA files; the family's packaged diffusers config (shipped in tagloop, so nothing is downloaded)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from ..layouts import A1111_DIRS, COMFYUI_DIRS
from ..weights import classify_keys, describe_kind
from .recognise import (
    CHECKPOINT_EXTS,
    CLIP_BPE_FILE,
    FAMILIES,
    PACKAGED_CONFIGS,
    GeneratorError,
    ModelFileError,
    ModelNotFoundError,
    checkpoint_tensors,
    family_of_folder,
    family_of_index,
    is_fp8,
    sd3_variant,
)

# --- finding files -------------------------------------------------------------------------------


def search_dirs(
    kind: str, explicit: Iterable[str | Path] = (), a1111_dir: str | Path | None = None, comfyui_dir: str | Path | None = None
) -> list[Path]:
    """Folders searched for a ``kind`` (checkpoint, vae, lora, embedding): explicit ones first."""
    out = [Path(p).expanduser() for p in explicit if p]
    if a1111_dir:
        out += [Path(a1111_dir).expanduser() / sub for sub in A1111_DIRS[kind]]
    if comfyui_dir:
        out += [Path(comfyui_dir).expanduser() / sub for sub in COMFYUI_DIRS[kind]]
    return out


def find_named_file(name: str, dirs: Iterable[Path], exts: tuple[str, ...] = CHECKPOINT_EXTS) -> Path | None:
    """A file called ``name`` (with or without extension; sub-folders searched, as A1111 lists them)."""
    name = name.strip()
    wanted = name.lower()
    for d in dirs:
        if not d.is_dir():
            continue
        direct = d / name
        if direct.is_file() or (direct.is_dir() and (direct / "model_index.json").is_file()):
            return direct
        for ext in exts:
            if (d / (name + ext)).is_file():
                return d / (name + ext)
        matches = sorted(
            p
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in exts and (p.stem.lower() == wanted or p.name.lower() == wanted)
        )
        if matches:
            return matches[0]
    return None


def list_named_files(dirs: Iterable[Path], exts: tuple[str, ...] = CHECKPOINT_EXTS) -> dict[str, Path]:
    """Stem -> path of every file with one of ``exts`` under ``dirs`` (first folder wins)."""
    out: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.rglob("*")):
                if p.is_file() and p.suffix.lower() in exts:
                    out.setdefault(p.stem, p)
    return out


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model``: where it is and what it is; nothing loaded yet.

    kind: ``diffusers`` (folder), ``single_file`` or ``hub``. ``name`` is what A1111 writes as ``Model:``
    (the file stem). ``variant`` is ``medium``/``large``/``medium-3.0`` for SD3 (see :func:`sd3_variant`). ``fp8``: weights stored as fp8.
    """

    kind: Literal["diffusers", "single_file", "hub"]
    family: str
    name: str
    path: Path | None = None
    repo_id: str | None = None
    variant: str | None = None
    fp8: bool = False

    @property
    def ident(self) -> str:
        return str(self.path.resolve()) if self.path is not None else f"hub:{self.repo_id}"


def inspect_model_file(path: Path, allow_pickle: bool = False) -> ModelSource:
    """Recognise a single checkpoint file; a file of another kind raises :class:`ModelFileError` naming it."""
    tensors = checkpoint_tensors(path, allow_pickle=allow_pickle)
    kind = classify_keys(tensors)
    if kind not in FAMILIES:
        raise ModelFileError(f"{path.name} is {describe_kind(kind)}, not a Stable Diffusion checkpoint.")
    variant = sd3_variant(tensors) if kind == "sd3" else None
    return ModelSource("single_file", kind, path.stem, path=path, variant=variant, fp8=is_fp8(tensors))


def resolve_model(
    spec: str | Path,
    *,
    a1111_dir: str | Path | None = None,
    comfyui_dir: str | Path | None = None,
    allow_pickle: bool = False,
) -> ModelSource:
    """Resolve a ``model`` argument without loading weights (reads headers / ``model_index.json`` only)."""
    from ..hub import HubError, download, looks_like_repo_id

    text = str(spec).strip()
    if not text:
        raise ModelNotFoundError(
            "`model` is empty; give a checkpoint file, a diffusers folder, a name in your A1111/ComfyUI folders or a hub id."
        )
    path = Path(text).expanduser()
    if not path.exists():
        found = find_named_file(text, search_dirs("checkpoint", (), a1111_dir, comfyui_dir))
        if found is not None:
            path = found
    if path.is_dir():
        return ModelSource("diffusers", family_of_folder(path), path.name, path=path)
    if path.is_file():
        return inspect_model_file(path, allow_pickle=allow_pickle)
    if looks_like_repo_id(text):
        try:
            index = download(text, "model_index.json", local_hint="Give a local diffusers folder or .safetensors file instead.")
        except HubError as e:
            raise ModelNotFoundError(str(e)) from None
        data = json.loads(Path(index).read_text(encoding="utf-8"))
        family = family_of_index(data, Path(index).parent, text)
        return ModelSource("hub", family, text.split("/")[-1], repo_id=text)
    where = []
    if a1111_dir:
        where.append(f"{Path(a1111_dir) / A1111_DIRS['checkpoint'][0]}")
    if comfyui_dir:
        where.append(f"{Path(comfyui_dir) / COMFYUI_DIRS['checkpoint'][0]}")
    looked = f" (looked in {', '.join(where)})" if where else " (pass --a1111-dir or --comfyui-dir to look up names there)"
    raise ModelNotFoundError(f"model {text!r} is not a file, a folder or a known name{looked}.")


def resolve_vae(spec: str | Path, *, a1111_dir=None, comfyui_dir=None, allow_pickle: bool = False) -> Path:
    """A ``vae`` argument as a local file or folder; a non-VAE file is named as such."""
    path = Path(str(spec)).expanduser()
    if not path.exists():
        found = find_named_file(str(spec), search_dirs("vae", (), a1111_dir, comfyui_dir))
        if found is None:
            raise ModelNotFoundError(f"VAE {str(spec)!r} is not a file, a folder or a name in your A1111/ComfyUI VAE folders.")
        path = found
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
            raise ModelFileError(
                f"{path} is a folder without config.json or vae/config.json; give a diffusers VAE folder or a VAE file."
            )
        return path
    kind = classify_keys(checkpoint_tensors(path, allow_pickle=allow_pickle))
    if kind in FAMILIES:
        return path  # A1111 accepts a full checkpoint's baked VAE too; diffusers extracts first_stage_model
    if kind != "vae":
        raise ModelFileError(f"{path.name} is {describe_kind(kind)}, not a VAE.")
    return path


def find_lora(name: str, lora_dirs: Iterable[Path]) -> Path | None:
    """The LoRA file A1111 would pick for ``<lora:NAME:...>``: a file whose stem is NAME (``.safetensors`` first)."""
    return find_named_file(name, lora_dirs, exts=(".safetensors", ".pt", ".ckpt"))


# --- packaged configs ----------------------------------------------------------------------------


def _data_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "configs"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tagloop" / "configs"


def clip_vocab_from_bpe(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's ``vocab.json`` and merges from the BPE merge list CLIP ships (``bpe_simple_vocab_16e6.txt.gz``).

    Recipe of CLIP's ``SimpleTokenizer``: the first 48,894 merges after the header line; vocabulary =
    256 byte characters, the same with ``</w>``, one entry per merge, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (49,408 entries).
    """
    from ..a1111.clip_bpe import clip_vocab, read_bpe_merges

    merges = read_bpe_merges(bpe_gz)
    return clip_vocab(merges), merges


def packaged_config_dir(family: str, variant: str | None = None) -> Path:
    """A diffusers-layout config folder (no weights) for ``family``, ready for ``from_single_file(config=...)``.

    The package ships the JSON configs and CLIP's BPE merge list once; on first use they are copied to
    the user cache and each CLIP tokenizer gets its ``vocab.json``/``merges.txt`` written there.
    """
    key = family if family != "sd3" else f"sd3-{variant or 'medium'}"
    name = PACKAGED_CONFIGS.get(key)
    if key == "sd3-medium-3.0":
        raise GeneratorError(
            "this is an SD3 (3.0) medium checkpoint and tagloop ships configs for SD3.5 medium/large only; pass a "
            "local stable-diffusion-3-medium-diffusers folder with --config-dir (Python: config=DIR) or use that folder as "
            "the model."
        )
    if name is None:
        raise GeneratorError(
            f"tagloop ships no config for {family} single files; pass a local diffusers folder of the same family "
            "as the config (Python: config=DIR), or use a diffusers folder as the model."
        )
    src = _data_dir() / name
    if not src.is_dir():
        raise GeneratorError(f"the packaged config {name} is missing from this install; reinstall tagloop.")
    from .. import __version__

    dst = _cache_root() / f"{name}-{__version__}"
    if (dst / ".complete").is_file():
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    vocab = merges = None
    for tok_cfg in tmp.glob("tokenizer*/tokenizer_config.json"):
        cfg = json.loads(tok_cfg.read_text(encoding="utf-8"))
        if "CLIPTokenizer" not in str(cfg.get("tokenizer_class", "")):
            continue
        if vocab is None:
            vocab, merges = clip_vocab_from_bpe(_data_dir() / CLIP_BPE_FILE)
        (tok_cfg.parent / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tok_cfg.parent / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (tmp / ".complete").write_text("ok\n")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dst)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
