"""Running a tagger over many images: parallel decode, batched inference, thresholds, results.

Decoding, EXIF handling, Canny and preprocessing run in a thread pool (Pillow, OpenCV and numpy
release the GIL), a bounded number of images ahead of the model, while the main thread runs the
model on full batches. Memory stays bounded for folders of millions of files; results come back in
input order; a file that fails becomes a :class:`TagResult` with ``error`` set and the run goes on.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from .base import Tagger, TaggerError
from .preprocess import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageDecodeError, ImageSource, load_image, to_8bit
from .result import TagResult, TagScore
from .threshold import DEFAULT_BANDS, Band, edge_density, mcut_threshold, pick_band


@dataclass
class TagOptions:
    """Thresholds and run settings.

    threshold: a fixed score threshold, or None for the adaptive (edge density) one.
    general_threshold / character_threshold: per-category overrides (win over both).
    mcut: per-category MCut instead of the base threshold (characters at least 0.15).
    max_tags: keep at most this many tags (highest scores).
    """

    threshold: float | None = None
    general_threshold: float | None = None
    character_threshold: float | None = None
    mcut: bool = False
    bands: tuple[Band, ...] = DEFAULT_BANDS
    max_tags: int | None = None
    batch_size: int = 16
    workers: int = field(default_factory=lambda: max(1, min(8, (os.cpu_count() or 2))))
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    compute_edge_density: bool = True
    #: decode large JPEGs at a reduced DCT scale that still covers the model's input (see load_image)
    fast_decode: bool = False
    #: where JPEG decoding, the edge density and preprocessing run: ``cpu`` (Pillow, OpenCV),
    #: ``device`` (torch on the tagger's device: :mod:`tagloop.tagger.gpu_host`, same results), or
    #: ``auto`` (the device for a torch tagger on CUDA, else the CPU)
    preprocess_on: str = "auto"
    #: keep every non-rating probability >= this in ``TagResult.probs`` (None: keep none); the
    #: reproduction report scores and re-thresholds from them
    prob_floor: float | None = None

    def check(self) -> None:
        """Raise :class:`~tagloop.errors.InputError` naming the first setting out of range."""
        from ..errors import InputError

        if self.preprocess_on not in ("auto", "cpu", "device"):
            raise InputError(f"preprocess_on must be auto, cpu or device, not {self.preprocess_on!r}.")

        for name in ("threshold", "general_threshold", "character_threshold"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                raise InputError(f"{name} must be a number in 0..1 (or None), not {v!r}.")
        for name, low in (("batch_size", 1), ("workers", 1), ("max_tags", 0), ("max_pixels", 1)):
            v = getattr(self, name)
            if v is None and name in ("max_tags", "max_pixels"):
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InputError(f"{name} must be an integer >= {low}, not {v!r}.")


def make_tag_options(**fields) -> TagOptions:
    """:class:`TagOptions` from keyword fields, checked: unknown names and bad values are :class:`InputError`."""
    from dataclasses import fields as dc_fields

    from ..errors import InputError
    from .threshold import parse_bands

    known = {f.name for f in dc_fields(TagOptions)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"unknown tag option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    if isinstance(fields.get("bands"), str):
        try:
            fields["bands"] = tuple(parse_bands(fields["bands"]))
        except ValueError as e:
            raise InputError(f"bands: {e}") from None
    options = TagOptions(**{k: v for k, v in fields.items() if v is not None or k == "threshold"})
    options.check()
    return options


@dataclass
class _Prepared:
    index: int
    path: str
    array: np.ndarray | None = None
    density: float | None = None
    error: str | None = None


def _prepare(tagger: Tagger, index: int, source: ImageSource, name: str, options: TagOptions) -> _Prepared:
    try:
        fit = max(tagger.input_size) if options.fast_decode else None
        img = to_8bit(source) if isinstance(source, Image.Image) else load_image(source, options.max_pixels, fit)
        need_density = options.compute_edge_density or options.threshold is None
        density = edge_density(img) if need_density else None
        arr = tagger.preprocess(img)
        return _Prepared(index, name, arr, density)
    except ImageDecodeError as e:
        return _Prepared(index, name, error=str(e))
    except Exception as e:  # one bad file never stops a bulk run
        return _Prepared(index, name, error=f"{type(e).__name__}: {e}")


def host_device(tagger: Tagger, options: TagOptions) -> str | None:
    """The torch device the per-image host work runs on, or None for the CPU path (see ``preprocess_on``)."""
    if options.preprocess_on == "cpu":
        return None
    able = tagger.backend == "torch" and hasattr(tagger, "preprocess_tensor")
    if tagger.family == "deepdanbooru" and getattr(tagger, "preprocessing", "a1111") != "a1111":
        able = False
    if options.preprocess_on == "device":
        if not able:
            from ..errors import InputError

            raise InputError(
                f"preprocess_on device needs a torch tagger (DeepDanbooru with A1111 preprocessing, or WD v3 timm); "
                f"{tagger.describe()} preprocesses on the CPU: use preprocess_on cpu or auto."
            )
        return str(tagger.device)
    return str(tagger.device) if able and str(tagger.device).startswith("cuda") else None


def _prepare_on_device(tagger: Tagger, index: int, source, name: str, options: TagOptions, device: str) -> _Prepared:
    """:func:`_prepare` for a JPEG, on ``device``: decoded, measured and preprocessed there (same
    results as the CPU path); anything else (other formats, CMYK, a file that does not decode) goes
    the CPU way, which also words the error."""
    from .gpu_host import decode_jpegs, edge_density_torch

    data = source
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError:
            return _prepare(tagger, index, source, name, options)
    if not isinstance(data, (bytes, bytearray)) or not data[:2] == b"\xff\xd8":
        return _prepare(tagger, index, source, name, options)
    try:
        img = decode_jpegs([bytes(data)], device, options.max_pixels)[0]
        if img is None:
            return _prepare(tagger, index, data, name, options)
        need_density = options.compute_edge_density or options.threshold is None
        density = edge_density_torch([img], channels_first=True)[0] if need_density else None
        return _Prepared(index, name, tagger.preprocess_tensor(img), density)
    except Exception:  # noqa: BLE001 - the CPU path decides (and words) what is wrong
        return _prepare(tagger, index, data, name, options)


def build_result(tagger: Tagger, path: str, probs: np.ndarray, density: float | None, options: TagOptions) -> TagResult:
    """Turn one row of probabilities into a :class:`TagResult` with the thresholds applied."""
    cats = tagger.__dict__.get("_category_array")
    if cats is None or len(cats) != len(tagger.categories):  # made once per tagger: the label list is fixed
        cats = np.asarray(tagger.categories)
        tagger.__dict__["_category_array"] = cats
    return threshold_probs(tagger.tags, cats, probs, density, options, path=path, model=tagger.source)


def threshold_probs(
    names: Sequence[str],
    categories: Sequence[str],
    probs: np.ndarray | Sequence[float],
    density: float | None,
    options: TagOptions,
    path: str = "",
    model: str | None = None,
) -> TagResult:
    """The thresholds of ``options`` applied to one image's probabilities over ``names`` -> :class:`TagResult`.

    The one thresholding rule, for a model's full output and for probabilities kept in a report
    (re-thresholding a finished run without the model).
    """
    probs = np.asarray(probs, dtype=np.float32).ravel()
    cats = np.asarray(categories)
    band_threshold = None
    if options.threshold is not None:
        base, complexity, mode = float(options.threshold), None, "fixed"
        if density is not None:
            complexity = pick_band(density, options.bands).name
    else:
        band = pick_band(density if density is not None else 0.0, options.bands)
        base, complexity, mode = band.threshold, band.name, "adaptive"
        band_threshold = band.threshold
    if options.mcut:
        mode = "mcut"
    thresholds: dict[str, float] = {}
    general_thr = base
    character_thr = base
    if options.mcut:
        gen = probs[cats == "general"]
        chars = probs[cats == "character"]
        general_thr = mcut_threshold(gen) if gen.size else base
        character_thr = max(0.15, mcut_threshold(chars)) if chars.size else base
    if options.general_threshold is not None:
        general_thr = float(options.general_threshold)
    if options.character_threshold is not None:
        character_thr = float(options.character_threshold)
    thresholds["general"] = general_thr
    if (cats == "character").any():
        thresholds["character"] = character_thr

    # vectorised: a Python loop over every label (11k for WD v3) held the GIL ~5 ms an image
    order = np.argsort(-probs, kind="stable")
    is_rating = cats == "rating"
    rating: dict[str, float] = {names[i].removeprefix("rating:"): float(probs[i]) for i in order[is_rating[order]]}
    limit = np.where(cats == "character", character_thr, general_thr)
    passed = order[((probs >= limit) & ~is_rating)[order]]
    tags = [TagScore(names[i], float(probs[i]), str(cats[i])) for i in passed]
    kept: list[TagScore] | None = None
    if options.prob_floor is not None:
        above = order[((probs >= float(options.prob_floor)) & ~is_rating)[order]]
        kept = [TagScore(names[i], float(probs[i]), str(cats[i])) for i in above]
    if options.max_tags is not None:
        tags = tags[: max(0, options.max_tags)]
    return TagResult(
        path=path,
        tags=tags,
        rating=rating,
        threshold=general_thr,
        edge_density=density,
        complexity=complexity,
        thresholds=thresholds,
        model=model,
        threshold_mode=mode,
        band_threshold=band_threshold,
        probs=kept,
    )


def tag_sources(
    tagger: Tagger,
    sources: Iterable[ImageSource | Image.Image],
    options: TagOptions | None = None,
    names: Iterable[str] | None = None,
) -> Iterator[TagResult]:
    """Tag images (paths, bytes, file objects or PIL images) in input order, batched.

    At most ``batch_size * 3`` images are decoded ahead of the model, so memory is bounded.
    """
    options = options or TagOptions()
    batch_size = max(1, int(options.batch_size))
    ahead = batch_size * 3
    name_iter = iter(names) if names is not None else None
    pending: deque[Future[_Prepared]] = deque()
    src_iter = enumerate(sources)
    exhausted = False

    def submit_more(pool: ThreadPoolExecutor) -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < ahead:
            try:
                i, src = next(src_iter)
            except StopIteration:
                exhausted = True
                return
            name = next(name_iter) if name_iter is not None else (str(src) if isinstance(src, (str, Path)) else f"image{i}")
            pending.append(pool.submit(prepare, i, src, name))

    device = host_device(tagger, options)

    def prepare(i, src, name):
        if device is not None and not isinstance(src, Image.Image):
            return _prepare_on_device(tagger, i, src, name, options, device)
        return _prepare(tagger, i, src, name, options)

    with ThreadPoolExecutor(max_workers=max(1, options.workers), thread_name_prefix="tagloop-decode") as pool:
        submit_more(pool)
        group: list[_Prepared] = []  # failed files ride along so results keep input order
        n_ok = 0
        while pending:
            prep = pending.popleft().result()
            submit_more(pool)
            group.append(prep)
            n_ok += prep.error is None
            # a full batch runs; so does a group that only holds failures (nothing to wait for) or
            # one that grew long with failures behind a few good images (memory stays bounded)
            if n_ok == batch_size or n_ok == 0 or len(group) >= ahead:
                yield from _run_group(tagger, group, options)
                group, n_ok = [], 0
        if group:
            yield from _run_group(tagger, group, options)


def _run_group(tagger: Tagger, group: Sequence[_Prepared], options: TagOptions) -> Iterator[TagResult]:
    ok = [p for p in group if p.error is None]
    done = {id(p): r for p, r in zip(ok, _run_batch(tagger, ok, options))} if ok else {}
    for p in group:
        if p.error is not None:
            yield TagResult(path=p.path, tags=[], error=p.error, model=tagger.source)
        else:
            yield done[id(p)]


def prepare_image(tagger: Tagger, source: ImageSource | Image.Image, name: str, options: TagOptions) -> _Prepared:
    """Decode, measure and preprocess one image for ``tagger`` (the host work of a tag run; any thread).

    A file that does not decode comes back with ``error`` set. :func:`run_prepared` then runs the
    model on many prepared images at once, each thresholded by its own options.
    """
    return _prepare(tagger, 0, source, name, options)


def run_prepared(tagger: Tagger, batch: Sequence[_Prepared], options: Sequence[TagOptions]) -> list[TagResult]:
    """One forward pass over prepared images (``error`` ones become error results), each image
    thresholded by its own entry of ``options``: requests with different thresholds share a batch."""
    ok = [(p, o) for p, o in zip(batch, options) if p.error is None]
    done = {id(p): r for (p, _), r in zip(ok, _run_batch(tagger, [p for p, _ in ok], [o for _, o in ok]))} if ok else {}
    return [
        TagResult(path=p.path, tags=[], error=p.error, model=tagger.source) if p.error is not None else done[id(p)] for p in batch
    ]


def _run_batch(tagger: Tagger, batch: Sequence[_Prepared], options: TagOptions | Sequence[TagOptions]) -> list[TagResult]:
    """One forward pass; if it fails, each image alone, so one bad input only costs itself.

    ``options``: one for the whole batch, or one per image.

    Out of accelerator memory, the batch is split in halves and each half tried again (down to one
    image; the first split is said once). A :class:`TaggerError` (the model does not fit its
    labels, was closed, ...) is not an image problem: it propagates, so the command stops with exit
    code 2 instead of failing every image.
    """
    from ..devices import empty_cache, is_oom

    per_image = list(options) if not isinstance(options, TagOptions) else [options] * len(batch)
    stack = _stack([p.array for p in batch])
    try:
        probs = tagger.predict(stack)
    except TaggerError:
        raise  # the model itself is wrong (shape, labels, closed): every image would fail the same way
    except Exception as e:
        if is_oom(e) and len(batch) > 1:
            empty_cache()
            from ..notices import notice

            notice(
                f"the tagger ran out of memory with a batch of {len(batch)}; splitting batches in halves "
                "(a smaller `batch_size` avoids the retries)."
            )
            half = len(batch) // 2
            return _run_batch(tagger, batch[:half], per_image[:half]) + _run_batch(tagger, batch[half:], per_image[half:])
        if len(batch) == 1:
            why = "out of memory even alone" if is_oom(e) else f"{type(e).__name__}: {e}"
            return [TagResult(path=batch[0].path, tags=[], error=f"model failed: {why}", model=tagger.source)]
        return [r for p, o in zip(batch, per_image) for r in _run_batch(tagger, [p], [o])]
    return [build_result(tagger, p.path, row, p.density, o) for p, row, o in zip(batch, probs, per_image)]


def _stack(arrays: Sequence) -> np.ndarray:
    """One batch: numpy arrays stacked, or (from the device-side path) torch tensors stacked on their device."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        return np.stack(arrays)
    import torch

    device = next(a.device for a in arrays if isinstance(a, torch.Tensor))
    return torch.stack(
        [a if isinstance(a, torch.Tensor) else torch.from_numpy(np.array(a, order="C")).to(device) for a in arrays]
    )


def tag_image(
    tagger: Tagger, image: ImageSource | Image.Image, options: TagOptions | None = None, name: str | None = None
) -> TagResult:
    """Tag one image; raises :class:`ImageDecodeError` when it cannot be decoded."""
    result = next(tag_sources(tagger, [image], options, names=[name] if name else None))
    if result.error is not None:
        raise ImageDecodeError(result.error)
    return result


def expand_paths(paths: Iterable[str | Path], recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given plus images inside given folders (extensions case-insensitive).

    Returns ``(files, problems)``; a missing path, or a folder with no images in it, is a problem,
    not an exception.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.iterdir()
            try:
                found = sorted(
                    (f for f in walker if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
                    key=lambda f: str(f),
                )
                subfolders = not found and not recursive and any(c.is_dir() for c in p.iterdir())
            except OSError as e:
                problems.append((str(raw), f"cannot read this folder ({e.strerror or e})"))
                continue
            if not found:
                hint = ""
                if subfolders:
                    hint = "; it has subfolders: add --recursive to walk them"
                problems.append((str(raw), f"no images (.png, .jpg, .webp, ...) in this folder{hint}"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append((str(raw), "no such file or folder"))
    return files, problems


def iter_image_files(
    paths: Iterable[str | Path],
    recursive: bool = False,
    on_problem: Callable[[str, str], None] | None = None,
    caption_ext: str | None = None,
) -> Iterator[Path]:
    """:func:`expand_paths`, lazily: folders are read one directory at a time and never listed whole,
    in the same order (entries sorted as their full paths sort). Problems go to ``on_problem``.

    With ``caption_ext``, an image whose caption another image of its folder already claims
    (``a.png`` and ``a.jpg`` -> ``a.txt``) is a problem, as :func:`~tagloop.tagger.captions.sidecar_collisions` says.
    """
    say = on_problem or (lambda path, why: None)
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            n = 0
            try:
                for f in _walk(p, recursive, say, caption_ext):
                    n += 1
                    yield f
            except OSError as e:
                say(str(raw), f"cannot read this folder ({e.strerror or e})")
                continue
            if n == 0:
                hint = ""
                if not recursive and any(c.is_dir() for c in p.iterdir()):
                    hint = "; it has subfolders: add --recursive to walk them"
                say(str(raw), f"no images (.png, .jpg, .webp, ...) in this folder{hint}")
        elif p.is_file():
            yield p
        else:
            say(str(raw), "no such file or folder")


def _walk(folder: Path, recursive: bool, say: Callable[[str, str], None], caption_ext: str | None) -> Iterator[Path]:
    from .captions import collision_problem

    with os.scandir(folder) as it:
        entries = sorted(((e.name + ("/" if e.is_dir() else ""), e) for e in it), key=lambda x: x[0])
    owners: dict[str, Path] = {}
    for key, e in entries:
        if key.endswith("/"):
            if recursive:
                yield from _walk(Path(e.path), recursive, say, caption_ext)
            continue
        if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS or not e.is_file():
            continue
        f = Path(e.path)
        if caption_ext is not None:
            stem = os.path.normcase(f.stem)
            first = owners.setdefault(stem, f)
            if first is not f:
                say(str(f), collision_problem(f, first, caption_ext))
                continue
        yield f


def tag_files(
    tagger: Tagger,
    files: Sequence[Path],
    options: TagOptions | None = None,
    progress: Callable[[TagResult], None] | None = None,
) -> Iterator[TagResult]:
    for result in tag_sources(tagger, [str(f) for f in files], options):
        if progress is not None:
            progress(result)
        yield result
