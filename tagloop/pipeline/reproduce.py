"""The loop: a source picture -> tags -> prompt -> variants -> tags again -> an honest score, in rounds.

One :class:`Reproducer` holds the loaded models (a tagger, an optional judge tagger, a generator,
an optional CLIP model) and serves every source and round. Per source, in ``OUT/<stem>/``:

* ``source.png`` (the decoded source), ``prompt.json`` (the first prompt, ``tagloop prompt --format
  json`` shape: ``tagloop generate --from-json`` reads it), ``variants/<id>.png`` with A1111
  infotext (``r{round}-{index:05d}-{seed}``; image i of a round gets seed + i, as in A1111, and the
  seeds stay the same in every round so that rounds compare), ``report.html``, then ``report.json``.
* Every file is written atomically; ``report.json`` is written last, so a source with one is
  finished and a re-run skips it. A half-done source is finished: variants already on disk with
  the round's prompt in their infotext are read back, not generated again.

Refinement (``refine`` rounds): after each round, source tags that at least half of the round's
variants missed get ``weight_step`` more weight (up to ``max_weight``), tags spurious in most of
them go to the negative prompt; the run stops early when a round's mean F1 is not above the best
round's. The scores are :mod:`tagloop.report.compare`'s; docs/report-schema.md has every key.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ..errors import InputError
from ..report.build import (
    COMPARE_KIND,
    KIND,
    SCHEMA_VERSION,
    index_entry,
    jsonable,
    read_report,
    round_floats,
    score_report,
    tag_options_json,
    write_index,
    write_report,
)
from ..report.compare import PROB_FLOOR, ScoreSettings, raw_output
from ..tagtext import TagPolicy, canonical

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ..generator.generate import GenerationSettings, Generator
    from ..prompt.composer import ComposedPrompt, PromptSettings
    from ..tagger.base import Tagger
    from ..tagger.result import TagResult
    from ..tagger.run import TagOptions

#: Prompt parts the composer injects: never scored (a tagger does not read them back meaningfully).
INJECTED_KINDS = ("trigger", "quality", "lora_trigger")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class ReproduceSettings:
    """The loop's own settings (the stages' settings are their own dataclasses).

    variants: images per round; refine: refinement rounds after the first (0 = none); seed: the
    first variant's seed (-1: one random seed, recorded); img2img: start every variant from the
    source with ``denoise``; floor: a folder of unrelated pictures for the floor calibration;
    groups: a tag group file (None: the built-in one); weight_step/max_weight: how far one round
    raises a missed tag's weight and the cap; share: the share of a round's variants that must miss
    a tag (at least this many) or show a spurious tag (more than this many) for a change;
    augment: the ceiling copies; note: a line for the report (the demo's random-weights warning).
    """

    variants: int = 4
    refine: int = 0
    seed: int = -1
    img2img: bool = False
    denoise: float = 0.75
    floor: str | Path | None = None
    groups: str | Path | None = None
    weight_step: float = 0.1
    max_weight: float = 1.4
    share: float = 0.5
    augment: tuple[str, ...] = ("flip", "crop", "jpeg")
    note: str | None = None
    #: an edited prompt used instead of the composed one (the web page's "edit the prompt"); the
    #: report still scores against the source's tags. None: the composed prompt.
    prompt: str | None = None
    negative_prompt: str | None = None
    #: prompt styles (``tags``, ``sentence``, ``llm``) whose round-0 prompts are also generated with the
    #: same seeds and scored, in the report's ``styles`` section (the run's own style is always one).
    compare_styles: tuple[str, ...] = ()

    def check(self) -> None:
        from ..report.calibrate import AUGMENTS

        if not isinstance(self.variants, int) or self.variants < 1:
            raise InputError(f"`variants` must be an integer of at least 1, not {self.variants!r}.")
        if not isinstance(self.refine, int) or self.refine < 0:
            raise InputError(f"`refine` must be an integer of at least 0, not {self.refine!r}.")
        if not isinstance(self.seed, int) or not -1 <= self.seed <= MAX_SEED:
            raise InputError(f"`seed` must be -1 (random) or an integer in 0..{MAX_SEED}, not {self.seed!r}.")
        if not 0.0 < float(self.denoise) <= 1.0:
            raise InputError(f"`denoise` must be above 0 and at most 1, not {self.denoise!r}.")
        if not 0.0 < float(self.weight_step) <= 1.0 or not 1.0 <= float(self.max_weight) <= 2.0:
            raise InputError("`weight_step` must be in (0, 1] and `max_weight` in [1, 2].")
        if self.prompt is not None and self.refine:
            raise InputError("`refine` rewrites the composed prompt each round; use `refine` 0 with an edited `prompt`.")
        if not 0.0 < float(self.share) < 1.0:
            raise InputError(f"`share` must be between 0 and 1, not {self.share!r}.")
        unknown = [a for a in self.augment if a not in AUGMENTS]
        if unknown:
            raise InputError(f"`augment` {unknown}: known copies are {', '.join(AUGMENTS)}.")
        if self.floor is not None and not Path(self.floor).is_dir():
            raise InputError(f"`floor` {self.floor} is not a folder; give a folder of unrelated pictures.")
        if isinstance(self.compare_styles, str) or not all(isinstance(x, str) for x in self.compare_styles):
            raise InputError(f"`compare_styles` must be a list of prompt styles, not {self.compare_styles!r}.")
        from ..prompt.sentence import PROMPT_STYLES

        bad = [x for x in self.compare_styles if x not in PROMPT_STYLES]
        if bad:
            raise InputError(f"`compare_styles` {', '.join(map(repr, bad))}: known styles are {', '.join(PROMPT_STYLES)}.")


@dataclass
class VariantResult:
    """One variant: its id, round, seed, file (None without an output folder), error and scores."""

    id: str
    round: int | None  # None: a compared prompt style's variant (``style``)
    index: int
    seed: int
    path: Path | None
    error: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    image: Any = field(default=None, repr=False)

    @property
    def f1(self) -> float | None:
        return (self.scores.get("tagger") or {}).get("f1")


@dataclass
class ReproduceResult:
    """One source's run: status, the first prompt, the variants of every round, the report (JSON)."""

    source: str
    status: str
    message: str | None
    out_dir: Path | None
    prompt: ComposedPrompt | None
    rounds: list[dict[str, Any]]
    variants: list[VariantResult]
    best: dict[str, Any] | None
    report: dict[str, Any]
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return self.report

    @classmethod
    def from_report(cls, report: dict[str, Any], out_dir: Path | None, skipped: bool = False) -> ReproduceResult:
        variants = [
            VariantResult(
                v["id"],
                v.get("round", 0),
                v.get("index", 0),
                v.get("seed", 0),
                (out_dir / v["file"]) if out_dir and v.get("file") else None,
                v.get("error"),
                v.get("scores", {}),
            )
            for v in report.get("variants", [])
        ]
        return cls(
            source=(report.get("source") or {}).get("path", ""),
            status=report.get("status", "ok"),
            message=report.get("message"),
            out_dir=out_dir,
            prompt=None,
            rounds=report.get("rounds", []),
            variants=variants,
            best=report.get("best"),
            report=report,
            skipped=skipped,
        )


@dataclass
class Comparison:
    """``tagloop.compare``'s result: the source against any images, with the ceiling calibration."""

    source: str
    variants: list[VariantResult]
    best: dict[str, Any] | None
    report: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.report


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(path: Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    from ..a1111.hashes import sha256_file

    return sha256_file(path)


def tagger_info(tagger: Tagger) -> dict[str, Any]:
    src = Path(tagger.source) if tagger.source else None
    return {"source": tagger.source, "family": tagger.family, "backend": tagger.backend, "sha256": _sha256(src)}


def unique_stems(sources: Sequence[str | Path]) -> list[str]:
    """One folder name per source: its file stem, ``-2``, ``-3``... for repeats (input order)."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        stem = Path(str(s)).stem or "image"
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).lstrip(".") or "image"
        n = seen.get(stem.lower(), 0) + 1
        seen[stem.lower()] = n
        out.append(stem if n == 1 else f"{stem}-{n}")
    return out


class Reproducer:
    """Loaded models and settings, serving every source and round of a run."""

    def __init__(
        self,
        tagger: Tagger,
        generator: Generator,
        *,
        tag_options: TagOptions | None = None,
        prompt_settings: PromptSettings | None = None,
        generation: GenerationSettings | None = None,
        settings: ReproduceSettings | None = None,
        judge: Tagger | None = None,
        clip: Any = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        from ..generator.settings import GenerationSettings
        from ..prompt.composer import PromptSettings
        from ..report.groups import load_groups
        from ..tagger.run import TagOptions

        self.tagger = tagger
        self.generator = generator
        self.judge = judge
        self.clip = clip
        self.tag_options = dataclasses.replace(tag_options or TagOptions(), prob_floor=PROB_FLOOR)
        self.tag_options.check()
        from ..filters.chain import FilterSettings
        from ..prompt.composer import resolve_settings

        self.prompt_settings = prompt_settings or PromptSettings()
        # the run's filters as the composer applies them (the preset's style and replacements included)
        self.filters = FilterSettings(**resolve_settings(self.prompt_settings)[0].filter_fields())
        self.settings = settings or ReproduceSettings()
        self.settings.check()
        if "llm" in self.settings.compare_styles:
            eff = resolve_settings(dataclasses.replace(self.prompt_settings, prompt_style="llm"))[0]
            if eff.llm is None:
                raise InputError("`compare_styles` llm needs a language model: give `llm` (--llm) too.")
        self.groups = load_groups(self.settings.groups)
        self.generation = generation or GenerationSettings()
        self.seed = self.settings.seed if self.settings.seed != -1 else random.randint(0, MAX_SEED - self.settings.variants)
        self.echo = echo or (lambda m: None)
        self._floor: list[tuple[str, str, dict[str, Any]]] | None = None  # (id, path, outputs)
        self._floor_embed: list[Any] | None = None
        if generator is not None:  # every generation setting checked before any work
            self.generator.prepare(self._generation_settings("x", "", 0, 1, None))

    # -- the pieces -------------------------------------------------------------------------------

    def _read(self, tagger: Tagger, images: Sequence[Any], names: Sequence[str]) -> list[TagResult]:
        from ..tagger.run import tag_sources

        return list(tag_sources(tagger, list(images), self.tag_options, names=list(names)))

    def _outputs(self, images: Sequence[Any], names: Sequence[str], timings: dict[str, float], key: str) -> list[dict[str, Any]]:
        """Raw outputs of the tagger (and judge) for ``images``: ``[{"tagger": raw, "judge": raw} | {"error": ...}]``."""
        t0 = time.perf_counter()
        primary = self._read(self.tagger, images, names)
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
        judged: list[TagResult | None] = [None] * len(primary)
        if self.judge is not None:
            t0 = time.perf_counter()
            judged = self._read(self.judge, images, names)
            timings["judge"] = timings.get("judge", 0.0) + time.perf_counter() - t0
        out = []
        for p, j in zip(primary, judged):
            if p.error is not None:
                out.append({"error": p.error})
                continue
            entry = {"tagger": raw_output(p)}
            if j is not None and j.error is None:
                entry["judge"] = raw_output(j)
            out.append(entry)
        return out

    def _clip(self, source: Image.Image, images: Sequence[Any], timings: dict[str, float]) -> list[float | None]:
        if self.clip is None or not images:
            return [None] * len(images)
        t0 = time.perf_counter()
        try:
            return self.clip.cosines(source, list(images))
        finally:
            timings["clip"] = timings.get("clip", 0.0) + time.perf_counter() - t0

    def _floor_images(self, timings: dict[str, float]) -> list[tuple[str, str, dict[str, Any]]]:
        """The floor folder's pictures, read once per run and reused for every source."""
        if self._floor is not None:
            return self._floor
        self._floor = []
        if self.settings.floor is None:
            return self._floor
        from ..tagger.preprocess import load_image
        from ..tagger.run import expand_paths

        files, _ = expand_paths([self.settings.floor])
        names = [f"floor-{i}" for i in range(len(files))]
        outputs = self._outputs([str(f) for f in files], names, timings, "calibrate")
        self._floor = [(n, str(f), o) for n, f, o in zip(names, files, outputs)]
        if True:  # the pictures themselves: for CLIP and the structure score
            imgs = []
            for f in files:
                try:
                    imgs.append(load_image(str(f), self.tag_options.max_pixels))
                except Exception:
                    imgs.append(None)
            self._floor_embed = imgs
        if not any("error" not in o for _, _, o in self._floor):
            raise InputError(f"`floor` {self.settings.floor}: no picture there could be read; give a folder of images.")
        return self._floor

    def _generation_settings(self, positive: str, negative: str, seed: int, count: int, init: Any) -> GenerationSettings:
        fields: dict[str, Any] = dict(
            prompt=positive, negative_prompt=negative, prompts=[], seed=seed, batch_size=count, batch_count=1, out_dir=None
        )
        if self.settings.img2img:
            fields.update(init_image=init if init is not None else _blank(), denoising_strength=float(self.settings.denoise))
        if self.generation.control:  # ControlNet units without an image are conditioned on the source
            source = getattr(self, "_control_source", None)
            source = _blank() if source is None else source
            fields["control"] = [
                u if u.image is not None else dataclasses.replace(u, image=source) for u in self.generation.control
            ]
        return dataclasses.replace(self.generation, **fields)

    def _generate(
        self,
        rnd: int,
        composed: ComposedPrompt,
        folder: Path | None,
        init: Any,
        timings: dict[str, float],
        prefix: str | None = None,
    ) -> list[VariantResult]:
        """The round's variants: read back from ``folder`` when a file has this round's prompt, else generated.

        ``prefix``: the ids' first part (default ``r{rnd}``; ``s-{style}`` for a compared prompt style).
        """
        from ..a1111.infotext import save_png

        n = self.settings.variants
        prefix = prefix or f"r{rnd}"
        variants = [
            VariantResult(
                f"{prefix}-{i:05d}-{self.seed + i}",
                rnd,
                i,
                self.seed + i,
                (folder / "variants" / f"{prefix}-{i:05d}-{self.seed + i}.png") if folder else None,
            )
            for i in range(n)
        ]
        todo = [v for v in variants if not self._reuse(v, composed)]
        t0 = time.perf_counter()
        for run in _contiguous(todo):
            try:
                images = self.generator.generate(
                    self._generation_settings(composed.positive, composed.negative, run[0].seed, len(run), init)
                )
                pairs = list(zip(run, images))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one variant's failure is recorded, the others go on
                if len(run) > 1:
                    pairs = []
                    for v in run:
                        try:
                            pairs.append(
                                (
                                    v,
                                    self.generator.generate(
                                        self._generation_settings(composed.positive, composed.negative, v.seed, 1, init)
                                    )[0],
                                )
                            )
                        except KeyboardInterrupt:
                            raise
                        except Exception as e1:  # noqa: BLE001
                            v.error = f"generation failed: {type(e1).__name__}: {e1}"
                else:
                    run[0].error = f"generation failed: {type(e).__name__}: {e}"
                    pairs = []
            for v, im in pairs:
                v.image = im.image
                if v.path is not None:
                    save_png(im.image, v.path, im.infotext)
        timings["generate"] = timings.get("generate", 0.0) + time.perf_counter() - t0
        return variants

    def _add_variants(
        self,
        report: dict[str, Any],
        variants: list[VariantResult],
        folder: Path | None,
        rgb: Any,
        timings: dict[str, float],
        fields: dict[str, Any],
    ) -> None:
        """Re-tag ``variants`` and add their ``images`` and ``variants`` entries (``fields``: round or style)."""
        good = [v for v in variants if v.error is None and v.image is not None]
        outs = self._outputs([v.image for v in good], [v.id for v in good], timings, "retag")
        cos = self._clip(rgb, [v.image for v in good], timings)
        edges = _structure(rgb, [v.image for v in good], timings)
        by_id = {v.id: (o, c, e) for v, o, c, e in zip(good, outs, cos, edges)}
        for v in variants:
            o, c, e = by_id.get(v.id, ({}, None, None))
            error = v.error or o.get("error")
            v.error = error
            file = str(v.path.relative_to(folder)) if folder is not None and v.path is not None else None
            report["images"][v.id] = _image_entry(
                "variant", file, str(v.path) if v.path else v.id, {**o, "error": error}, c, None if error else e
            )
            report["variants"].append({"id": v.id, **fields, "index": v.index, "seed": v.seed, "file": file, "error": error})

    def _compare_styles(
        self,
        report: dict[str, Any],
        primary: TagResult,
        composed: ComposedPrompt,
        folder: Path | None,
        init: Any,
        rgb: Any,
        timings: dict[str, float],
        variants_all: list[VariantResult],
    ) -> None:
        """Round 0 again for every other prompt style (same seeds, same scorers): the report's ``styles`` section.

        The run's own style is round 0 itself; refinement rounds go on from it only. The means and
        bests are :func:`~tagloop.report.build.score_report`'s (so ``tagloop report`` re-scores them).
        """
        from ..prompt.composer import compose_prompt

        base = composed.prompt_style
        first = report["rounds"][0]
        styles: dict[str, Any] = {
            base: {"prompt": first["positive"], "negative": first["negative"], "variants": list(first["variants"])}
        }
        for style in self.settings.compare_styles:
            if style in styles:
                continue
            t0 = time.perf_counter()
            styled = compose_prompt(primary, dataclasses.replace(self.prompt_settings, prompt_style=style))
            timings["compose"] = timings.get("compose", 0.0) + time.perf_counter() - t0
            self.echo(f"  style {style}: generating {self.settings.variants} variant(s)")
            variants = self._generate(0, styled, folder, init, timings, prefix=f"s-{style}")
            for v in variants:
                v.round = None  # not a round: a style of round 0
            self._add_variants(report, variants, folder, rgb, timings, {"round": None, "style": style})
            variants_all.extend(variants)
            styles[style] = {"prompt": styled.positive, "negative": styled.negative, "variants": [v.id for v in variants]}
        report["styles"] = {"base": base, "best": None, "by_style": styles}
        self._score(report)

    def _reuse(self, variant: VariantResult, composed: ComposedPrompt) -> bool:
        """A variant file of an interrupted run with this round's prompt and seed: read it back."""
        if variant.path is None or not variant.path.is_file():
            return False
        from PIL import Image

        from ..a1111.infotext import read_image_metadata

        try:
            params = read_image_metadata(variant.path).parameters
            with Image.open(variant.path) as im:
                im.load()
                image = im.convert("RGB")
        except Exception:
            return False
        if params.get("Prompt", "") != composed.positive or params.get("Negative prompt", "") != composed.negative:
            return False
        if str(params.get("Seed")) != str(variant.seed):
            return False
        variant.image = image
        return True

    def _refine(
        self,
        report: dict[str, Any],
        rnd: dict[str, Any],
        composed: ComposedPrompt,
        weights: dict[str, float],
        negatives: list[str],
    ) -> list[dict[str, Any]]:
        """The next round's changes from this round's scores (``weights`` and ``negatives`` updated in place)."""
        by_id = {v["id"]: v for v in report["variants"]}
        scored = [by_id[i]["scores"]["tagger"] for i in rnd["variants"] if "tagger" in by_id[i].get("scores", {})]
        n = len(scored)
        if not n:
            return []
        s = self.settings
        missed: dict[str, int] = {}
        spurious: dict[str, int] = {}
        for sc in scored:
            for m in sc["missing"]:
                missed[m["tag"]] = missed.get(m["tag"], 0) + 1
            for m in sc["spurious"]:
                spurious[m["tag"]] = spurious.get(m["tag"], 0) + 1
        in_prompt = {p.tag: p for p in composed.parts if p.kind == "tag" and p.tag}
        changes = []
        need = max(1, math.ceil(n * s.share))
        for tag, count in sorted(missed.items(), key=lambda kv: (-kv[1], kv[0])):
            if count < need or tag not in in_prompt:
                continue
            part = in_prompt[tag]
            current = weights.get(tag, part.weight if part.weight is not None else 1.0)
            new = round(min(s.max_weight, current + s.weight_step), 2)
            if new <= current + 1e-9:
                continue
            weights[tag] = new
            changes.append(
                {"tag": tag, "change": "weight", "from": current, "to": new, "why": f"missed by {count} of {n} variants"}
            )
        policy = TagPolicy(use_spaces=True, escape=True)
        already = {canonical(p.text) for p in composed.negative_parts}
        for tag, count in sorted(spurious.items(), key=lambda kv: (-kv[1], kv[0])):
            if count <= n * s.share or tag in already or tag in in_prompt:
                continue
            negatives.append(policy.format(tag))
            changes.append(
                {"tag": tag, "change": "negative", "from": None, "to": None, "why": f"spurious in {count} of {n} variants"}
            )
        return changes

    def _calibrate(self, report: dict[str, Any], rgb: Image.Image, timings: dict[str, float]) -> None:
        """The ceiling (altered copies of the source) and the floor (unrelated pictures), read by every scorer."""
        from ..report.calibrate import ceiling_copies

        copies = ceiling_copies(rgb, self.settings.augment)
        outs = self._outputs(list(copies.values()), list(copies), timings, "calibrate")
        cos = self._clip(rgb, list(copies.values()), timings)
        edges = _structure(rgb, list(copies.values()), timings)
        for (cid, _), o, c, e in zip(copies.items(), outs, cos, edges):
            report["images"][cid] = _image_entry("ceiling", None, cid, o, c, e)
        floor = self._floor_images(timings)
        floor_edges = _structure(rgb, [_flatten(im) if im is not None else None for im in self._floor_embed or []], timings)
        floor_edges += [None] * (len(floor) - len(floor_edges))
        floor_cos: list[float | None] = [None] * len(floor)
        if self.clip is not None and self._floor_embed:
            ok = [(i, im) for i, im in enumerate(self._floor_embed) if im is not None]
            for (i, _), c in zip(ok, self._clip(rgb, [im for _, im in ok], timings)):
                floor_cos[i] = c
        for (fid, fpath, o), c, e in zip(floor, floor_cos, floor_edges):
            report["images"][fid] = _image_entry("floor", None, fpath, o, c, e)

    # -- one source -----------------------------------------------------------------------------

    def _skeleton(self, source: str, folder: Path | None) -> dict[str, Any]:
        gen = self.generator
        gen_info = None
        if gen is not None:
            src = gen.source
            gen_info = {"source": str(src.path or src.repo_id or src.name), "family": gen.family, "sha256": _sha256(src.path)}
        report = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "tagloop_version": _version(),
            "created": _now(),
            "note": self.settings.note,
            "status": "ok",
            "message": None,
            "source": {"path": source, "file": "source.png" if folder else None},
            "settings": {
                "variants": self.settings.variants,
                "refine": self.settings.refine,
                "seed": self.seed,
                "img2img": self.settings.img2img,
                "denoise": self.settings.denoise,
                "tag": tag_options_json(self.tag_options),
                "prompt": jsonable(self.prompt_settings),
                "generate": _generation_json(self.generation, gen),
                "score": {
                    "filters": jsonable(self.filters),
                    "prob_floor": PROB_FLOOR,
                    "groups": self.groups.source,
                    "augment": list(self.settings.augment),
                    "floor": str(self.settings.floor) if self.settings.floor else None,
                    "weight_step": self.settings.weight_step,
                    "max_weight": self.settings.max_weight,
                    "share": self.settings.share,
                },
            },
            "models": {
                "tagger": tagger_info(self.tagger),
                "judge": tagger_info(self.judge) if self.judge is not None else None,
                "generator": gen_info,
                "clip": {"source": self.clip.source, "family": "clip", "sha256": None} if self.clip is not None else None,
            },
            "images": {},
            "excluded": [],
            "prompt": None,
            "rounds": [],
            "variants": [],
            "timings": {},
        }
        if self.settings.compare_styles:
            report["settings"]["compare_styles"] = list(self.settings.compare_styles)
        return report

    def _score(self, report: dict[str, Any]) -> dict[str, Any]:
        settings = ScoreSettings(filters=self.filters, exclude=frozenset(report["excluded"]), groups=self.groups)
        return score_report(report, self.tag_options, settings)

    def run(self, source: str | Path | Any, folder: Path | None = None, name: str | None = None) -> ReproduceResult:
        """Reproduce one source (a path, bytes or a PIL image); write into ``folder`` when given.

        Raises :class:`~tagloop.tagger.preprocess.ImageDecodeError` for an undecodable source.
        """
        from PIL import Image as PILImage

        from ..a1111.infotext import save_png
        from ..fileio import atomic_write_text
        from ..prompt.composer import compose_prompt
        from ..tagger.preprocess import load_image

        name = name or (str(source) if isinstance(source, (str, Path)) else "image")
        if folder is not None:
            folder = Path(folder)
            done = read_report(folder / "report.json")
            if done is not None:
                return ReproduceResult.from_report(done, folder, skipped=True)
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        img = source.copy() if isinstance(source, PILImage.Image) else load_image(source, self.tag_options.max_pixels)
        rgb = _flatten(img)
        report = self._skeleton(name, folder)
        report["source"].update(width=img.width, height=img.height)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            _remove_stale_temp_files(folder)
            save_png(img, folder / "source.png", None)
            report["source"]["sha256"] = _sha256(folder / "source.png")
        elif isinstance(source, (str, Path)):
            report["source"]["sha256"] = _sha256(Path(source))

        t0 = time.perf_counter()
        primary = self._read(self.tagger, [img], [name])[0]
        timings["tag"] = time.perf_counter() - t0
        if primary.error is not None:
            from ..tagger.preprocess import ImageDecodeError

            raise ImageDecodeError(primary.error)
        outputs = {"tagger": raw_output(primary)}
        if self.judge is not None:
            t0 = time.perf_counter()
            judged = self._read(self.judge, [img], [name])[0]
            timings["judge"] = time.perf_counter() - t0
            if judged.error is None:
                outputs["judge"] = raw_output(judged)
        report["images"]["source"] = {
            "kind": "source",
            "file": report["source"]["file"],
            "path": name,
            "error": None,
            "outputs": outputs,
            "clip_cosine": None,
        }

        t0 = time.perf_counter()
        composed = compose_prompt(primary, self.prompt_settings)
        if self.settings.prompt is not None:
            composed = dataclasses.replace(
                composed,
                positive=self.settings.prompt,
                negative=composed.negative if self.settings.negative_prompt is None else self.settings.negative_prompt,
            )
        timings["compose"] = time.perf_counter() - t0
        report["prompt"] = composed.to_json()
        report["excluded"] = sorted({canonical(p.text) for p in composed.parts if p.kind in INJECTED_KINDS} - {""})
        if folder is not None:
            atomic_write_text(folder / "prompt.json", composed.to_json_str() + "\n")

        if not composed.kept_tags():
            report["status"] = "no_tags"
            where = f"at threshold {primary.threshold:.2f}" if primary.threshold is not None else ""
            report["message"] = (
                f"the tagger found no tags to build a prompt from {where} (found {len(primary.tags)} before the filters); "
                "a photo, a non-anime or a very small picture gives none: try a lower `threshold` or another tagger."
            ).replace("  ", " ")
            return self._finish(report, folder, None, [], timings, t_start)

        self._calibrate(report, rgb, timings)

        init = rgb if self.settings.img2img else None
        self._control_source = rgb  # the control image of units given without one
        weights = dict(self.prompt_settings.weights)
        negatives: list[str] = []
        changes: list[dict[str, Any]] = []
        best_mean = -1.0
        variants_all: list[VariantResult] = []
        round_composed = composed
        stop_reason = None
        for r in range(self.settings.refine + 1):
            if r > 0:
                settings_r = dataclasses.replace(
                    self.prompt_settings,
                    weights=tuple(weights.items()),
                    negative_extra=tuple(self.prompt_settings.negative_extra) + tuple(negatives),
                )
                round_composed = compose_prompt(primary, settings_r)
            self.echo(f"  round {r}: generating {self.settings.variants} variant(s)")
            variants = self._generate(r, round_composed, folder, init, timings)
            self._add_variants(report, variants, folder, rgb, timings, {"round": r})
            rnd = {
                "round": r,
                "positive": round_composed.positive,
                "negative": round_composed.negative,
                "changes": changes,
                "variants": [v.id for v in variants],
            }
            report["rounds"].append(rnd)
            variants_all.extend(variants)
            self._score(report)
            mean = (rnd["mean"].get("tagger") or {}).get("f1")
            mean = -1.0 if mean is None else mean
            if r > 0 and mean <= best_mean + 1e-9:
                stop_reason = f"round {r}'s mean F1 ({mean:.3f}) is not above the best before it ({best_mean:.3f})"
                break
            best_mean = max(best_mean, mean)
            if r == 0 and self.settings.compare_styles:
                self._compare_styles(report, primary, composed, folder, init, rgb, timings, variants_all)
            if r < self.settings.refine:
                changes = self._refine(report, rnd, round_composed, weights, negatives)
                if not changes:
                    stop_reason = f"after round {r}, no tag was missed by at least half the variants or spurious in most of them"
                    break
        report["stopped"] = stop_reason
        return self._finish(report, folder, composed, variants_all, timings, t_start)

    def _finish(self, report, folder, composed, variants, timings, t_start) -> ReproduceResult:
        report = self._score(report)
        timings["total"] = time.perf_counter() - t_start
        report["timings"] = {k: round(v, 4) for k, v in timings.items()}
        report = round_floats(report)
        by_id = {v["id"]: v for v in report["variants"]}
        for v in variants:
            v.scores = by_id[v.id].get("scores", {})
        if folder is not None:
            write_report(folder, report)
        return ReproduceResult(
            source=report["source"]["path"],
            status=report["status"],
            message=report["message"],
            out_dir=folder,
            prompt=composed,
            rounds=report["rounds"],
            variants=variants,
            best=report.get("best"),
            report=report,
        )

    # -- many sources ---------------------------------------------------------------------------

    def run_many(
        self,
        sources: Sequence[str | Path],
        out: Path,
        on_error: Callable[[str, str], None] | None = None,
        on_result: Callable[[ReproduceResult], None] | None = None,
    ) -> list[ReproduceResult]:
        """Every source into ``out/<stem>/``, then ``out/index.html``; an undecodable source is reported and skipped."""
        from ..fileio import check_outputs
        from ..tagger.preprocess import ImageDecodeError

        out = Path(out)
        stems = unique_stems(sources)
        inputs = [str(s) for s in sources]
        planned = [("the index", out / "index.json"), ("the index", out / "index.html")]
        seeds = [self.seed + i for i in range(self.settings.variants)]
        for stem in stems:
            for f in ("source.png", "prompt.json", "report.json", "report.html"):
                planned.append((f"{stem}/{f}", out / stem / f))
            prefixes = [f"r{r}" for r in range(self.settings.refine + 1)]
            prefixes += [f"s-{style}" for style in dict.fromkeys(self.settings.compare_styles)]
            for prefix in prefixes:
                for i, seed in enumerate(seeds):
                    planned.append((f"{stem} variant", out / stem / "variants" / f"{prefix}-{i:05d}-{seed}.png"))
        check_outputs(planned, inputs)
        results: list[ReproduceResult] = []
        entries = []
        for src, stem in zip(sources, stems):
            self.echo(f"{src} -> {out / stem}/")
            try:
                result = self.run(src, out / stem, name=str(src))
            except ImageDecodeError as e:
                if on_error is not None:
                    on_error(str(src), str(e))
                entries.append(
                    {
                        "stem": stem,
                        "path": str(src),
                        "status": "failed",
                        "message": str(e),
                        "best_f1": None,
                        "mean_f1": None,
                        "report": None,
                    }
                )
                continue
            results.append(result)
            entries.append(index_entry(stem, result.report))
            if on_result is not None:
                on_result(result)
        write_index(out, entries)
        return results


def compare_images(
    tagger: Tagger,
    source: Any,
    variants: Sequence[Any],
    *,
    tag_options: TagOptions | None = None,
    prompt_settings: PromptSettings | None = None,
    settings: ReproduceSettings | None = None,
    judge: Tagger | None = None,
    clip: Any = None,
    out: Path | None = None,
) -> Comparison:
    """Score any images against a source (``tagloop report --compare``): the report schema, kind ``compare``.

    ``variants`` are paths, bytes or PIL images (made anywhere: A1111, ComfyUI...). Nothing is
    excluded as injected (there is no composed prompt); the run's filters apply to both sides.
    """
    from ..tagger.preprocess import load_image

    rep = Reproducer(
        tagger, None, tag_options=tag_options, prompt_settings=prompt_settings, settings=settings, judge=judge, clip=clip
    )  # type: ignore[arg-type]
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    name = str(source) if isinstance(source, (str, Path)) else "source"
    img = source if not isinstance(source, (str, Path, bytes)) else load_image(source, rep.tag_options.max_pixels)
    rgb = _flatten(img)
    report = rep._skeleton(name, None)
    report["kind"] = COMPARE_KIND
    report["source"].update(
        width=img.width, height=img.height, sha256=_sha256(Path(source)) if isinstance(source, (str, Path)) else None
    )
    del report["settings"]["generate"], report["settings"]["refine"], report["settings"]["img2img"], report["settings"]["denoise"]
    report["settings"]["variants"] = len(variants)
    report["images"]["source"] = _image_entry("source", None, name, rep._outputs([img], [name], timings, "tag")[0], None)
    if report["images"]["source"]["error"]:
        from ..tagger.preprocess import ImageDecodeError

        raise ImageDecodeError(report["images"]["source"]["error"])
    rep._calibrate(report, rgb, timings)
    names = [str(v) if isinstance(v, (str, Path)) else f"image-{i:05d}" for i, v in enumerate(variants)]
    ids = [f"v-{i:05d}" for i in range(len(variants))]
    decoded = []
    for v in variants:
        try:
            decoded.append(v if not isinstance(v, (str, Path, bytes)) else load_image(v, rep.tag_options.max_pixels))
        except Exception as e:  # noqa: BLE001 - an unreadable image is recorded, the others go on
            decoded.append(e)
    good = [(i, d) for i, d in enumerate(decoded) if not isinstance(d, Exception)]
    outs = rep._outputs([d for _, d in good], [ids[i] for i, _ in good], timings, "retag")
    cos = rep._clip(rgb, [d for _, d in good], timings)
    got = {i: (o, c) for (i, _), o, c in zip(good, outs, cos)}
    results = []
    for i, (vid, vname) in enumerate(zip(ids, names)):
        o, c = got.get(i, ({"error": str(decoded[i])}, None))
        error = o.get("error")
        report["images"][vid] = _image_entry("variant", None, vname, o, c)
        report["variants"].append({"id": vid, "round": 0, "index": i, "seed": None, "file": None, "path": vname, "error": error})
        results.append(VariantResult(vid, 0, i, 0, Path(vname) if isinstance(variants[i], (str, Path)) else None, error))
    report["rounds"].append({"round": 0, "positive": None, "negative": None, "changes": [], "variants": ids})
    report = rep._score(report)
    timings["total"] = time.perf_counter() - t_start
    report["timings"] = {k: round(v, 4) for k, v in timings.items()}
    report = round_floats(report)
    for r, v in zip(results, report["variants"]):
        r.scores = v.get("scores", {})
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        from ..a1111.infotext import save_png

        save_png(img, out / "source.png", None)
        report["source"]["file"] = "source.png"
        report["images"]["source"]["file"] = "source.png"
        for i, (v, d) in enumerate(zip(report["variants"], decoded)):
            if not isinstance(d, Exception):
                v["file"] = f"variants/{v['id']}.png"
                report["images"][v["id"]]["file"] = v["file"]
                save_png(_flatten(d), out / v["file"], None)
        write_report(out, report)
    return Comparison(source=name, variants=results, best=report.get("best"), report=report)


def rescore_folder(
    folder: Path,
    tag_overrides: dict[str, Any] | None = None,
    *,
    groups: str | Path | None = None,
    prompt_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Re-score every finished report under ``folder`` (itself, or its sub-folders) and write it again.

    ``tag_overrides`` (threshold, general_threshold, character_threshold, mcut, bands) and
    ``prompt_overrides`` (filter settings) replace the run's recorded values; ``groups`` replaces
    its group file. Works from the tagger outputs the report kept: no model is loaded.
    """
    from ..report.build import filter_settings_from_json, tag_options_from_json
    from ..report.groups import load_groups

    folder = Path(folder)
    singles = [folder] if (folder / "report.json").is_file() else sorted(p.parent for p in folder.glob("*/report.json"))
    done = []
    for sub in singles:
        report = read_report(sub / "report.json")
        if report is None:
            raise InputError(f"{sub / 'report.json'} is not a tagloop report of schema version {SCHEMA_VERSION}.")
        recorded = report.get("settings", {})
        options = tag_options_from_json(recorded.get("tag"), **(tag_overrides or {}))
        score = recorded.setdefault("score", {})
        filters = filter_settings_from_json(score.get("filters", recorded.get("prompt")), **(prompt_overrides or {}))
        group_file = groups if groups is not None else score.get("groups")
        tag_groups = load_groups(group_file)
        settings = ScoreSettings(filters=filters, exclude=frozenset(report.get("excluded") or ()), groups=tag_groups)
        score_report(report, options, settings)
        recorded["tag"] = tag_options_json(options)
        score["filters"] = jsonable(filters)
        score["groups"] = tag_groups.source
        report["rescored"] = _now()
        write_report(sub, report)
        done.append(report)
    index = folder / "index.json"
    if index.is_file() and singles and singles != [folder]:
        from ..report.build import read_index

        entries = read_index(index)
        stems = {sub.name: rep for sub, rep in zip(singles, done)}
        entries = [index_entry(e["stem"], stems[e["stem"]]) if e.get("stem") in stems else e for e in entries]
        write_index(folder, entries)
    return done


def _image_entry(
    kind: str, file: str | None, path: str, outputs: dict[str, Any], clip: float | None, structure: float | None = None
) -> dict[str, Any]:
    """One ``images`` entry of a report: raw outputs by scorer, or the error that stopped them."""
    return {
        "kind": kind,
        "file": file,
        "path": path,
        "error": outputs.get("error"),
        "outputs": {k: v for k, v in outputs.items() if k != "error"},
        "clip_cosine": clip,
        "structure": structure,
    }


def _structure(source: Any, images: Sequence[Any], timings: dict[str, float]) -> list[float | None]:
    """The structure score (:mod:`tagloop.report.structure`) of each image against the source (None: no image)."""
    from ..report.structure import structure_score

    t0 = time.perf_counter()
    try:
        return [None if im is None else structure_score(source, im) for im in images]
    finally:
        timings["structure"] = timings.get("structure", 0.0) + time.perf_counter() - t0


def _remove_stale_temp_files(folder: Path) -> None:
    """The temporary files a killed run's atomic writes left (``.NAME.XXXX.tmp``): never an output, safe to remove."""
    for where in (folder, folder / "variants"):
        if where.is_dir():
            for f in where.glob(".*.tmp"):
                try:
                    f.unlink()
                except OSError:
                    pass


def _contiguous(variants: Sequence[VariantResult]) -> Iterable[list[VariantResult]]:
    """Runs of consecutive seeds (one generate call each: image i of a batch gets seed + i)."""
    run: list[VariantResult] = []
    for v in variants:
        if run and v.seed != run[-1].seed + 1:
            yield run
            run = []
        run.append(v)
    if run:
        yield run


def _flatten(img: Image.Image) -> Image.Image:
    """RGB, transparency on white (what the taggers see and the generator starts from)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _blank():
    from PIL import Image

    return Image.new("RGB", (64, 64), (255, 255, 255))


def _version() -> str:
    from .. import __version__

    return __version__


def _generation_json(g: GenerationSettings, gen: Generator | None) -> dict[str, Any]:
    keys = (
        "sampler",
        "schedule_type",
        "steps",
        "cfg_scale",
        "width",
        "height",
        "clip_skip",
        "max_batch",
        "hires_scale",
        "hires_steps",
        "hires_denoise",
        "hires_upscaler",
    )
    out = {k: jsonable(getattr(g, k)) for k in keys}
    if gen is not None:
        out["model"] = gen.source.name
    out["control"] = [
        {
            "module": u.module,
            "model": str(u.model),
            "weight": u.weight,
            "guidance_start": u.guidance_start,
            "guidance_end": u.guidance_end,
            "resize_mode": u.resize_mode,
            "low_threshold": u.low_threshold,
            "high_threshold": u.high_threshold,
            "image": "source" if u.image is None else str(u.image) if isinstance(u.image, (str, Path)) else "given",
        }
        for u in g.control
    ]
    return out
