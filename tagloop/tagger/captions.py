"""Kohya-style caption sidecars: file names, clashes, text, and the rule that no caption replaces an image."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, OutputPathError
from ..fileio import check_outputs
from ..tagtext import TagPolicy
from .preprocess import IMAGE_EXTENSIONS
from .result import TagResult


def normalise_extension(value: str) -> str:
    """``txt`` or ``.txt`` -> ``.txt``; :class:`InputError` for anything that is not a file extension."""
    ext = str(value).strip()
    if ext and not ext.startswith("."):
        ext = "." + ext
    try:
        Path("image").with_suffix(ext)
        ok = len(ext) > 1
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"{value!r} is not a file extension such as .txt or .caption.")
    return ext


def check_run_outputs(files: list[Path], output: str | None, failures: str | None, sidecar: bool, ext: str) -> None:
    """Refuse, before any work, a run that would write over one of its input images.

    ``--output`` and ``--failures`` may not be inputs; sidecar captions may not have an image
    extension (the next run would read them as images, and a caption named like its image
    replaces it) nor land on a file given as an input.
    """
    check_outputs([("--output", output), ("--failures", failures)], files)
    if output and failures and os.path.abspath(output) == os.path.abspath(failures):
        raise OutputPathError(f"--output and --failures are the same file ({output}): give each its own path.")
    if not sidecar:
        return
    if ext.lower() in IMAGE_EXTENSIONS:
        raise OutputPathError(
            f"caption extension {ext} is an image extension: captions would overwrite the images they describe "
            "(or be read as images next time); use .txt or .caption."
        )
    inputs = {os.path.normcase(os.path.abspath(f)) for f in files}
    for f in files:
        cap = f.with_suffix(ext)
        if os.path.normcase(os.path.abspath(cap)) in inputs:
            raise OutputPathError(f"the caption of {f} would be written over the input {cap}: choose another caption extension.")


def check_outputs_outside_folders(paths, outputs: list[tuple[str, str | None]]) -> None:
    """For folders read lazily (not compared file by file before the run): refuse, before any work,
    an output named like an image inside a folder to be tagged (it would be read as an input)."""
    folders = [Path(p).resolve() for p in paths if Path(p).is_dir()]
    for name, out in outputs:
        if not out or Path(out).suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        target = Path(out).resolve()
        if any(target.is_relative_to(f) for f in folders):
            raise OutputPathError(
                f"{name} {out} has an image extension and lies in a folder being tagged: it would be read as an input."
            )


def sidecar_collisions(files: list[Path], ext: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """Images whose caption file another image already claims (``a.png`` and ``a.jpg`` -> ``a.txt``).

    Returns ``(kept, problems)``: the first image (in the given order) keeps the caption; each
    later one is a problem naming both, so no caption is silently overwritten.
    """
    owner: dict[str, Path] = {}
    kept: list[Path] = []
    problems: list[tuple[str, str]] = []
    for f in files:
        cap = f.with_suffix(ext)
        key = os.path.normcase(os.path.abspath(cap))
        first = owner.setdefault(key, f)
        if first is f:
            kept.append(f)
        else:
            problems.append((str(f), collision_problem(f, first, ext)))
    return kept, problems


def collision_problem(f: Path, first: Path, ext: str) -> str:
    """Why ``f`` gets no caption: ``first`` already has the caption file both would write."""
    return f"its caption {f.with_suffix(ext).name} is already written for {first.name}; rename one of the two images"


def caption(result: TagResult, policy: TagPolicy, scores: bool, include_rating: bool, character_first: bool) -> str:
    tags = list(result.tags)
    if character_first:
        tags.sort(key=lambda t: t.category != "character")  # stable: score order kept within groups
    names = [t.name for t in tags]
    values = [t.score for t in tags] if scores else None
    if include_rating and result.rating:
        top = result.top_rating()
        names.insert(0, f"rating:{top}" if not top.startswith("rating:") else top)
        if values is not None:
            values.insert(0, result.rating[top])
    return policy.join(names, values)
