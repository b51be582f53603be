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


def tag(image: str | Path | bytes | Image.Image | Any, model: str | Path | Tagger | None = None, **options: Any) -> TagResult:
    """Tag one image in one call: ``tagloop.tag("a.png").tags`` (``model``: a name as for
    :func:`load_tagger`, or a loaded :class:`Tagger`).

    ``options`` are :func:`load_tagger`'s keywords and the fields of
    :class:`~tagloop.tagger.run.TagOptions` (``threshold``, ``general_threshold``, ``mcut``,
    ``bands``, ``max_tags``, ...). A bad image is a result with ``error`` set.
    """
    load = {k: options.pop(k) for k in list(options) if k in _LOAD_KEYS}
    from .tagger.base import Tagger

    tagger = model if isinstance(model, Tagger) else load_tagger(model, **load)
    return tagger.tag(image, **options)


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


def _split_settings(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Keyword settings -> per stage (tag options, prompt settings, generation settings, loop settings)."""
    import dataclasses

    from .errors import InputError
    from .generator.settings import GenerationSettings
    from .pipeline.reproduce import ReproduceSettings
    from .prompt.composer import PromptSettings
    from .tagger.run import TagOptions

    stages = {
        "tag": {f.name for f in dataclasses.fields(TagOptions)} - {"prob_floor"},
        "prompt": {f.name for f in dataclasses.fields(PromptSettings)} - {"max_tags"},
        "generate": {f.name for f in dataclasses.fields(GenerationSettings)}
        - {
            "prompt",
            "negative_prompt",
            "prompts",
            "seed",
            "batch_size",
            "batch_count",
            "init_image",
            "denoising_strength",
            "out_dir",
        },
        "loop": {f.name for f in dataclasses.fields(ReproduceSettings)},
    }
    out: dict[str, dict[str, Any]] = {k: {} for k in stages}
    for key, value in settings.items():
        if key == "max_tags":  # one name, two stages: the prompt's tag count (the tagger's is `tag_max_tags`)
            out["prompt"][key] = value
            continue
        if key == "tag_max_tags":
            out["tag"]["max_tags"] = value
            continue
        stage = next((name for name, keys in stages.items() if key in keys), None)
        if stage is None:
            known = sorted(set().union(*stages.values()))
            raise InputError(f"unknown setting {key!r}; known: {', '.join(known)}.")
        out[stage][key] = value
    return out


def _as_tagger(tagger: Any, device: str) -> Tagger:
    from .tagger.base import Tagger as TaggerClass

    return tagger if isinstance(tagger, TaggerClass) else load_tagger(tagger, device=device)


def _loop_parts(tagger, judge_tagger, clip_model, device, settings):
    import dataclasses

    from .errors import InputError
    from .pipeline.reproduce import ReproduceSettings
    from .prompt.composer import PromptSettings
    from .tagger.run import make_tag_options

    parts = _split_settings(settings)
    try:
        prompt_settings = PromptSettings(**parts["prompt"])
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None
    loop = parts["loop"]
    return (
        _as_tagger(tagger, device),
        make_tag_options(**parts["tag"]),
        prompt_settings,
        parts["generate"],
        loop,
        _as_tagger(judge_tagger, device) if judge_tagger is not None else None,
        _clip(clip_model, device),
        dataclasses.fields(ReproduceSettings),
    )


def _clip(clip_model: Any, device: str):
    if clip_model is None:
        return None
    if isinstance(clip_model, (str, Path)):
        from .report.clip import load_clip

        return load_clip(clip_model, device=device)
    return clip_model


def reproduce(
    image: Any,
    *,
    tagger: Any = None,
    generator: Any,
    variants: int = 4,
    refine: int = 0,
    seed: int = -1,
    out_dir: str | Path | None = None,
    judge_tagger: Any = None,
    clip_model: Any = None,
    device: str = "auto",
    **settings: Any,
):
    """Reproduce a picture: tag, compose, generate ``variants``, tag them again, score; ``refine`` more rounds.

    ``image``: a path, bytes or PIL image -> :class:`~tagloop.pipeline.reproduce.ReproduceResult`;
    a list of paths or a folder -> a list of them (``out_dir`` then holds ``<stem>/`` per source
    and ``index.html``). ``tagger``/``judge_tagger``: a :class:`Tagger` or a model name (None: the
    default tagger); ``generator``: a :class:`Generator` or a model name. ``settings``: fields of
    :class:`TagOptions` (``threshold``...), :class:`PromptSettings` (``preset``, ``filter_files``,
    ``max_tags``...), :class:`GenerationSettings` (``steps``, ``sampler``, ``width``...) and
    :class:`~tagloop.pipeline.reproduce.ReproduceSettings` (``img2img``, ``denoise``, ``floor``,
    ``groups``, ``compare_styles=("tags", "sentence")``: round 0 with every style, same seeds, in the
    report's ``styles``...). With ``out_dir`` the files of ``tagloop reproduce`` are written (and a re-run
    resumes); without it nothing is written and ``result.variants[i].image`` holds the pictures.
    """
    import dataclasses

    from .generator.generate import Generator as GeneratorClass
    from .generator.settings import make_settings
    from .pipeline.reproduce import Reproducer, ReproduceSettings, unique_stems
    from .tagger.preprocess import ImageDecodeError

    tagger_obj, tag_options, prompt_settings, gen_fields, loop, judge, clip, _ = _loop_parts(
        tagger, judge_tagger, clip_model, device, settings
    )
    gen = generator if isinstance(generator, GeneratorClass) else load_generator(generator, device=device, progress=False)
    if isinstance(loop.get("compare_styles"), str):  # "tags,sentence" as on the command line
        loop["compare_styles"] = tuple(x.strip() for x in loop["compare_styles"].split(",") if x.strip())
    elif isinstance(loop.get("compare_styles"), list):
        loop["compare_styles"] = tuple(loop["compare_styles"])
    loop_settings = ReproduceSettings(variants=variants, refine=refine, seed=seed, **loop)
    rep = Reproducer(
        tagger_obj,
        gen,
        tag_options=tag_options,
        prompt_settings=prompt_settings,
        generation=make_settings(None, **gen_fields),
        settings=loop_settings,
        judge=judge,
        clip=clip,
    )
    many = isinstance(image, (list, tuple)) or (isinstance(image, (str, Path)) and Path(image).is_dir())
    if not many:
        folder = None
        if out_dir is not None:
            stem = unique_stems([image if isinstance(image, (str, Path)) else "image"])[0]
            folder = Path(out_dir) / stem
        try:
            return rep.run(image, folder)
        except ImageDecodeError as e:
            from .errors import InputError

            raise InputError(f"cannot reproduce {image if isinstance(image, (str, Path)) else 'the image'}: {e}") from None
    from .tagger.run import expand_paths

    files, problems = expand_paths([image] if isinstance(image, (str, Path)) else image)
    if out_dir is not None:
        return rep.run_many([str(f) for f in files], Path(out_dir))
    return [dataclasses.replace(rep.run(str(f)), skipped=False) for f in files]


def compare(
    source: Any,
    variants: Iterable[Any],
    *,
    groups: str | Path | None = None,
    tagger: Any = None,
    judge_tagger: Any = None,
    clip_model: Any = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    **settings: Any,
):
    """Score any pictures against a source -> :class:`~tagloop.pipeline.reproduce.Comparison`.

    ``variants``: paths, bytes or PIL images (made anywhere). ``groups``: a tag group file (None:
    the built-in groups). ``settings``: tag options and filter settings (``threshold``,
    ``filter_files``, ``floor``...). With ``out_dir``, report.json and report.html are written there.
    """
    from .pipeline.reproduce import ReproduceSettings, compare_images

    tagger_obj, tag_options, prompt_settings, gen_fields, loop, judge, clip, _ = _loop_parts(
        tagger, judge_tagger, clip_model, device, settings
    )
    return compare_images(
        tagger_obj,
        source,
        list(variants),
        tag_options=tag_options,
        prompt_settings=prompt_settings,
        settings=ReproduceSettings(groups=groups, **loop),
        judge=judge,
        clip=clip,
        out=Path(out_dir) if out_dir is not None else None,
    )


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
