"""tagloop's public Python API: one call per stage, plain dataclasses between them.

Imported lazily from :mod:`tagloop` (``tagloop.load_tagger`` ...), so ``import tagloop`` costs no
torch; each function imports what its stage needs when it is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .generator.generate import Generator
    from .prompt.composer import ComposedPrompt
    from .tagger.base import Tagger
    from .tagger.result import TagResult

#: Keyword arguments of :func:`load_tagger` (everything else given to :func:`tag` is a tag option).
_LOAD_KEYS = (
    "device",
    "dtype",
    "a1111_dir",
    "comfyui_dir",
    "allow_pickle",
    "require_gpu",
    "tensorrt",
    "backend",
    "dd_preprocess",
    "tags_file",
    "input_size",
)


def load_tagger(
    model: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    a1111_dir: str | Path | None = None,
    comfyui_dir: str | Path | None = None,
    allow_pickle: bool = False,
    require_gpu: bool = False,
    tensorrt: bool = False,
    backend: str | None = None,
    dd_preprocess: str = "a1111",
    tags_file: str | Path | None = None,
    input_size: str | int | None = None,
) -> Tagger:
    """Load a tagger, resolved as the ``tag`` command's model setting is, once per process.

    ``model`` is a file, a folder, ``deepdanbooru`` (found under ``a1111_dir``), a WD14 name or a
    hub id; None takes the config file's ``model``, else the default WD v3 SwinV2. The same model
    with the same settings is returned from the cache (:func:`clear_cache` releases it).
    """
    from .tagger.base import LoadOptions
    from .tagger.resolve import get_tagger

    options = LoadOptions(
        device=device or "auto",
        dtype=dtype or "auto",
        tensorrt=bool(tensorrt),
        require_gpu=bool(require_gpu),
        allow_pickle=bool(allow_pickle),
        dd_preprocess=dd_preprocess or "a1111",  # type: ignore[arg-type]
        tags_file=Path(tags_file) if tags_file else None,
        extra={"input_size": str(input_size)} if input_size else {},
    )
    a1111_dir = a1111_dir if a1111_dir is not None else _config_value("a1111_dir", "tag")
    comfyui_dir = comfyui_dir if comfyui_dir is not None else _config_value("comfyui_dir", "tag")
    spec = str(model) if model is not None else default_tagger_model()
    return get_tagger(spec, options, a1111_dir=a1111_dir, comfyui_dir=comfyui_dir, backend=backend)


def tag(image: str | Path | bytes | Image.Image | Any, model: str | Path | None = None, **options: Any) -> TagResult:
    """Tag one image in one call: ``tagloop.tag("a.png").tags``.

    ``options`` are :func:`load_tagger`'s keywords and the fields of
    :class:`~tagloop.tagger.run.TagOptions` (``threshold``, ``general_threshold``, ``mcut``,
    ``bands``, ``max_tags``, ...). A bad image is a result with ``error`` set.
    """
    load = {k: options.pop(k) for k in list(options) if k in _LOAD_KEYS}
    return load_tagger(model, **load).tag(image, **options)


def compose_prompt(result_or_tags: TagResult | str | Iterable[Any], **settings: Any) -> ComposedPrompt:
    """Filter tags and compose the positive and negative prompt -> :class:`ComposedPrompt`.

    ``result_or_tags`` is a :class:`TagResult`, a ``"tag, tag"`` string (``(tag:0.9)`` gives a
    score), or tag names / :class:`TagScore` values. ``settings`` are the fields of
    :class:`~tagloop.prompt.composer.PromptSettings` (``preset``, ``negative_preset``, ``filters``,
    ``style``, ``budget``, ...); a bad value is an :class:`~tagloop.errors.InputError`.
    """
    from .errors import InputError
    from .prompt.composer import PromptSettings
    from .prompt.composer import compose_prompt as _compose
    from .tagger.result import TagResult

    result = result_or_tags if isinstance(result_or_tags, TagResult) else _result_from_tags(result_or_tags)
    try:
        prompt_settings = PromptSettings(**settings)
    except TypeError as e:
        raise InputError(f"unknown prompt setting: {e}.") from None
    except ValueError as e:
        raise InputError(str(e)) from None
    return _compose(result, prompt_settings)


def _result_from_tags(tags: str | Iterable[Any]) -> TagResult:
    from .tagger.result import TagResult, TagScore
    from .tagtext import split_tags

    if isinstance(tags, str):
        from .prompt.sources import parse_tag_text

        return parse_tag_text(tags)[0]
    scores = []
    for t in tags:
        if isinstance(t, TagScore):
            scores.append(t)
        elif isinstance(t, str):
            scores.extend(TagScore(name.replace(" ", "_"), 1.0) for name in split_tags(t))
        else:
            name, score = t
            scores.append(TagScore(str(name), float(score)))
    return TagResult(path="", tags=scores)


def load_generator(
    model: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    vae: str | Path | None = None,
    lora_dirs: Iterable[str | Path] = (),
    embeddings_dirs: Iterable[str | Path] = (),
    a1111_dir: str | Path | None = None,
    comfyui_dir: str | Path | None = None,
    **options: Any,
) -> Generator:
    """A Stable Diffusion :class:`~tagloop.generator.generate.Generator`, resolved now, loaded on first use.

    ``model`` is a checkpoint file, a diffusers folder, a name in ``a1111_dir``/``comfyui_dir`` or a
    hub id; ``options`` are the Generator's other keywords (``offload``, ``vae_tiling``,
    ``attention_slicing``, ``compile``, ``allow_pickle``, ``config``, ``progress``). One Generator per
    model and settings is kept for the process (:func:`clear_cache` releases them).
    """
    from .generator.generate import Generator

    key = (
        str(model),
        device,
        dtype,
        str(vae),
        tuple(map(str, lora_dirs)),
        tuple(map(str, embeddings_dirs)),
        str(a1111_dir),
        str(comfyui_dir),
        tuple(sorted((k, repr(v)) for k, v in options.items())),
    )
    with _GEN_LOCK:
        gen = _GENERATORS.get(key)
        if gen is None:
            gen = Generator(
                model,
                device=device,
                dtype=dtype,
                vae=vae,
                lora_dirs=lora_dirs,
                embeddings_dirs=embeddings_dirs,
                a1111_dir=a1111_dir,
                comfyui_dir=comfyui_dir,
                **options,
            )
            _GENERATORS[key] = gen
        return gen


def read_infotext(path_or_image: str | Path | bytes | Image.Image) -> dict[str, Any]:
    """The A1111 infotext and ComfyUI prompt/workflow of an image, parsed, as ``tagloop info`` prints them."""
    from .a1111.infotext import read_image_metadata

    return read_image_metadata(path_or_image).to_dict()


def clear_cache() -> None:
    """Release every model this process keeps loaded (taggers and generators, GPU memory included)."""
    from .tagger.resolve import clear_cache as clear_taggers

    clear_taggers()
    with _GEN_LOCK:
        _GENERATORS.clear()
    import sys

    if "tagloop.generator.models" in sys.modules:
        sys.modules["tagloop.generator.models"].cache_clear()
    if "torch" in sys.modules:
        import gc

        gc.collect()
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def default_tagger_model() -> str:
    """The config file's tagger ``model`` ([tag] table first, then top level), else the default."""
    from .tagger.resolve import DEFAULT_MODEL

    value = _config_value("model", "tag")
    return str(value) if value else DEFAULT_MODEL


def _config_value(key: str, command: str) -> Any:
    """A key of the user's tagloop.toml for ``command`` (its table first), or None; paths as the file resolves them."""
    from .config import find_config, read_config

    path = find_config(None)
    if path is None:
        return None
    data = read_config(path)
    for table in (data.get(command), data):
        if isinstance(table, dict):
            for k in (key, key.replace("_", "-")):
                if k in table and not isinstance(table[k], dict):
                    value = table[k]
                    if isinstance(value, str) and (key.endswith("_dir") or key == "model"):
                        local = path.parent / Path(value).expanduser()
                        if key.endswith("_dir") or local.exists():
                            return str(local.resolve())
                    return value
    return None


import threading  # noqa: E402  (kept beside the cache it guards)

_GENERATORS: dict[tuple, Generator] = {}
_GEN_LOCK = threading.Lock()
