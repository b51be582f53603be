"""``tagloop prompt``: tags (from an image, a tag list or ``tagloop tag`` JSON) -> positive/negative prompt."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from ..filters.base import FilterFileError
from ..prompt.sources import parse_tag_text, read_json_source, read_results_json
from ..prompt.tokens import TokenizerError
from ..tagger.result import TagResult
from ..tagtext import canonical, split_tags
from .errors import handle_errors


class PromptConfigError(click.ClickException):
    """A bad filter/style/preset/replacement file or tokenizer folder: exit code 2."""

    exit_code = 2


def _split_pairs(values: tuple[str, ...], what: str) -> None:
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r} is not `{what}`.")


#: The prompt command's options that :func:`build_prompt_settings` reads (``reproduce`` shares them).
PROMPT_OPTION_NAMES = (
    "filter_files", "block", "style", "preset", "negative_preset", "negative_extra", "quality", "trigger_words", "loras",
    "budget", "tokenizer", "always_first", "max_tags", "replace_pairs", "replace_files", "no_overlap", "keep_rating",
    "character_first", "category_order", "emphasis", "emphasis_range", "weights", "use_spaces", "escape",
    "prompt_style", "llm", "llm_max_new_tokens", "sentence_groups",
)  # fmt: skip


def build_prompt_settings(**opts: Any):
    """:class:`PromptSettings` from the prompt options' values (``emphasis_range`` as ``LOW:HIGH`` or a pair)."""
    from ..prompt.composer import PromptSettings

    _split_pairs(tuple(opts.get("replace_pairs") or ()), "old=new")
    _split_pairs(tuple(opts.get("weights") or ()), "tag=weight")
    rng = opts.get("emphasis_range") or "0.8:1.2"
    if isinstance(rng, str):
        try:
            lo, hi = (float(x) for x in rng.split(":"))
        except ValueError:
            raise click.BadParameter(f"{rng!r} is not LOW:HIGH, e.g. 0.8:1.2.", param_hint="--emphasis-range") from None
    else:
        lo, hi = rng
    category_order = opts.get("category_order")
    always_first = opts.get("always_first")
    quality = opts.get("quality")
    order = None
    if category_order is not None:
        order = tuple(canonical(c) for c in split_tags(category_order))
    elif opts.get("character_first") is False:
        order = ()
    try:
        return PromptSettings(
            filter_files=tuple(opts.get("filter_files") or ()),
            block=tuple(opts.get("block") or ()),
            keep_rating=bool(opts.get("keep_rating")),
            style=opts.get("style"),
            overlap=not opts.get("no_overlap"),
            replace=tuple(opts.get("replace_pairs") or ()),
            replace_files=tuple(opts.get("replace_files") or ()),
            always_first=tuple(split_tags(always_first)) if always_first else (),
            category_order=order,
            max_tags=opts.get("max_tags"),
            preset=opts.get("preset"),
            quality_tags=None if quality is None else tuple(split_tags(quality)),
            trigger_words=tuple(t for w in opts.get("trigger_words") or () for t in split_tags(w)),
            loras=tuple(opts.get("loras") or ()),
            negative_preset=opts.get("negative_preset"),
            negative_extra=tuple(t for n in opts.get("negative_extra") or () for t in split_tags(n)),
            emphasis=opts.get("emphasis"),
            emphasis_range=(lo, hi),
            weights=tuple(opts.get("weights") or ()),
            budget=opts.get("budget"),
            tokenizer=opts.get("tokenizer") or "auto",
            use_spaces=opts.get("use_spaces"),
            escape=opts.get("escape"),
            prompt_style=opts.get("prompt_style"),
            llm=opts.get("llm"),
            llm_max_new_tokens=opts.get("llm_max_new_tokens") or 120,
            sentence_groups=opts.get("sentence_groups"),
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None


_OWN_NAMES = {"max_tags"}  # options this command defines itself even if the tagger's decorator has them too


def _tagger_integration() -> tuple[list[click.Parameter], Callable[..., TagResult] | None]:
    """The tagger's click options and ``tag_one`` (the tag command)."""
    try:
        from .tag import tag_one, tagger_options
    except ImportError:  # the tagger runner is not installed in this tree
        return [], None

    def _probe() -> None:  # collects the parameters the decorator adds
        pass

    tagger_options(_probe)
    params = [p for p in reversed(getattr(_probe, "__click_params__", [])) if p.name not in _OWN_NAMES]
    return params, tag_one


@click.command("prompt", context_settings={"max_content_width": 100})
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--tags",
    "tags_text",
    default=None,
    help="Tags to compose instead of tagging an image: `1girl, solo, long hair`; `(tag:0.93)` gives a score.",
)
@click.option(
    "--from-json",
    "from_json",
    default=None,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Results written by `tagloop tag --format json|jsonl` (one object, a list, or JSONL; `-` = stdin).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: the prompt, then `Negative prompt: ...` (A1111 infotext style); json: the full record.",
)
@click.option(
    "--filters",
    "filter_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Blocklist file (A1111 filter.txt format plus `*`, `re:`, `!keep`); repeat to combine.",
)
@click.option("--block", multiple=True, help="Extra blocklist entries, same syntax as a filter file line; repeatable.")
@click.option(
    "--style",
    default=None,
    help="Style-conflict rules: anime, realistic, chibi, illustration, none, or a TOML/YAML rules file (default: the preset's).",
)
@click.option(
    "--preset", default=None, help="Prompt preset: default, plain, sd15-anime, sdxl-anime, sd3-natural, or a TOML preset file."
)
@click.option(
    "--negative-preset",
    default=None,
    help="Negative prompt: seed (seed 001's, the default), general, anime, portrait, landscape, or none (empty).",
)
@click.option("--negative", "negative_extra", multiple=True, help="Extra negative prompt entries (`a, b`); repeatable.")
@click.option(
    "--quality", default=None, help='Quality tags in front, replacing the preset\'s (`masterpiece, best quality`; `""` = none).'
)
@click.option("--trigger", "trigger_words", multiple=True, help="Model trigger words put first (`ace_step style`); repeatable.")
@click.option(
    "--lora",
    "loras",
    multiple=True,
    help="LoRA as `NAME[:WEIGHT][=trigger, words]`: writes <lora:NAME:WEIGHT> and its trigger words; repeatable.",
)
@click.option(
    "--budget",
    type=click.IntRange(min=0),
    default=None,
    help="CLIP-token budget of the positive prompt; lowest-scoring tags are dropped to fit (0 = none).",
)
@click.option(
    "--tokenizer",
    default=None,
    help="CLIP tokenizer folder (or a diffusers model folder with tokenizer/) for exact counts; `auto`, `estimate`, `open_clip`.",
)
@click.option("--always-first", default=None, help="Tags pinned to the front in this order when present, e.g. `1girl, solo`.")
@click.option(
    "--max-tags",
    type=click.IntRange(min=1),
    default=None,
    help="Keep at most N tagger tags after filtering (lowest scores dropped; pinned tags stay).",
)
@click.option(
    "--replace", "replace_pairs", multiple=True, help="Rewrite a tag: `old=new` (new may be `a, b`; empty removes); repeatable."
)
@click.option(
    "--replace-file",
    "replace_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="File of `old=new` lines (`#` comments); repeatable.",
)
@click.option(
    "--no-overlap",
    is_flag=True,
    default=False,
    help="Keep general tags that a more specific tag implies (`long hair` with `very long hair`).",
)
@click.option(
    "--keep-rating",
    is_flag=True,
    default=False,
    help="Keep rating tags in the prompt (default: removed, reported as the rating).",
)
@click.option(
    "--character-first/--no-character-first",
    default=None,
    help="Character tags before the others (default on; the preset may add categories).",
)
@click.option(
    "--category-order",
    default=None,
    help="Categories first, in order, e.g. `character, copyright` (overrides --character-first).",
)
@click.option(
    "--emphasis",
    type=click.Choice(["none", "confidence", "score"]),
    default=None,
    help="Weights from tagger scores: confidence maps 0..1 to the --emphasis-range, score writes (tag:score).",
)
@click.option("--emphasis-range", default="0.8:1.2", show_default=True, help="LOW:HIGH weights for `--emphasis confidence`.")
@click.option("--weight", "weights", multiple=True, help="Explicit weight `tag=1.2`, written as (tag:1.2); repeatable.")
@click.option("--spaces/--underscores", "use_spaces", default=None, help="Write tags with spaces (default) or underscores.")
@click.option(
    "--escape/--no-escape",
    "escape",
    default=None,
    help="Escape ( ) \\ in tags so A1111 reads them as text (default: the preset's).",
)
@click.option(
    "--prompt-style",
    type=click.Choice(["tags", "sentence", "llm"]),
    default=None,
    help="tags: a tag list; sentence: the same tags as one sentence (rule-based, for SD3.x); llm: a local language "
    "model writes it (--llm), checked against the tags (default: the preset's, else tags).",
)
@click.option(
    "--llm",
    default=None,
    help="For --prompt-style llm: a transformers model folder, a .gguf file (pip install tagloop[llm]) or a hub id "
    "(the only case that downloads).",
)
@click.option(
    "--llm-max-new-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Longest answer the language model may write (default 120 tokens).",
)
@click.option(
    "--sentence-groups",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Your own group file for --prompt-style sentence|llm (shaped like tagloop/data/sentence_groups.toml).",
)
@handle_errors
def prompt_command(
    image,
    tags_text,
    from_json,
    fmt,
    filter_files,
    block,
    style,
    preset,
    negative_preset,
    negative_extra,
    quality,
    trigger_words,
    loras,
    budget,
    tokenizer,
    always_first,
    max_tags,
    replace_pairs,
    replace_files,
    no_overlap,
    keep_rating,
    character_first,
    category_order,
    emphasis,
    emphasis_range,
    weights,
    use_spaces,
    escape,
    prompt_style,
    llm,
    llm_max_new_tokens,
    sentence_groups,
    **tagger_kwargs,
):
    """Compose a Stable Diffusion prompt from an image's tags: filters, quality tags, negative prompt, token budget.

    Give exactly one source: IMAGE (tagged with the tagger options), --tags, or --from-json.

    \b
    Examples:
      tagloop prompt --tags "1girl, solo, long hair, very long hair, rating:safe" --preset sd15-anime
      tagloop tag img.png --format json > tags.json
      tagloop prompt --from-json tags.json --filters filter.txt --style anime --budget 75 --format json
      tagloop prompt --tags "1girl, long hair, blue hair, smile, classroom" --prompt-style sentence
      tagloop prompt img.png --model deepdanbooru --a1111-dir ~/sd-webui --negative-preset anime
    """
    from ..prompt.composer import compose_prompt

    sources = [s for s in (image, tags_text, from_json) if s is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of IMAGE, `--tags` or `--from-json`.")
    _split_pairs(replace_pairs, "old=new")
    _split_pairs(weights, "tag=weight")
    try:
        lo, hi = (float(x) for x in emphasis_range.split(":"))
    except ValueError:
        raise click.BadParameter(f"{emphasis_range!r} is not LOW:HIGH, e.g. 0.8:1.2.", param_hint="--emphasis-range") from None

    scored = True
    if tags_text is not None:
        result, scored = parse_tag_text(tags_text)
        results = [result]
    elif from_json is not None:
        results = read_results_json(read_json_source(from_json), from_json)
    else:
        results = [_tag_image(image, tagger_kwargs)]
    if emphasis in ("confidence", "score") and not scored:
        raise click.UsageError(f"`--emphasis {emphasis}` needs tagger scores: use --from-json, or write tags as `(tag:0.9)`.")

    settings = build_prompt_settings(
        filter_files=filter_files,
        block=block,
        style=style,
        preset=preset,
        negative_preset=negative_preset,
        negative_extra=negative_extra,
        quality=quality,
        trigger_words=trigger_words,
        loras=loras,
        budget=budget,
        tokenizer=tokenizer,
        always_first=always_first,
        max_tags=max_tags,
        replace_pairs=replace_pairs,
        replace_files=replace_files,
        no_overlap=no_overlap,
        keep_rating=keep_rating,
        character_first=character_first,
        category_order=category_order,
        emphasis=emphasis,
        emphasis_range=(lo, hi),
        weights=weights,
        use_spaces=use_spaces,
        escape=escape,
        prompt_style=prompt_style,
        llm=llm,
        llm_max_new_tokens=llm_max_new_tokens,
        sentence_groups=sentence_groups,
    )

    composed = []
    failed = 0
    for result in results:
        if result.error is not None:
            failed += 1
            click.echo(f"tagloop: {result.path or '<input>'}: {result.error}", err=True)
            continue
        try:
            composed.append(compose_prompt(result, settings))
        except (FilterFileError, TokenizerError) as e:
            raise PromptConfigError(str(e)) from None
    for c in composed:
        for w in c.warnings:
            click.echo(f"tagloop: {c.path + ': ' if c.path else ''}{w}", err=True)
    if fmt == "json":
        data: Any = [c.to_json() for c in composed] if len(results) > 1 else (composed[0].to_json() if composed else {})
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        blocks = [(f"# {c.path}\n" if len(results) > 1 and c.path else "") + c.text() for c in composed]
        if blocks:
            click.echo("\n\n".join(blocks))
    if failed:
        sys.exit(1)


def _tag_image(image: str, tagger_kwargs: dict[str, Any]) -> TagResult:
    """Tag IMAGE with the tagger options (the tag command)."""
    if _TAG_ONE is None:
        raise click.UsageError(
            "tagging an image needs the tag command (tagloop.cli.tag), which this install lacks; use --tags or --from-json."
        )
    from ..cli.errors import to_command_error
    from ..errors import TagloopError
    from ..tagger.preprocess import ImageDecodeError

    try:
        return _TAG_ONE(image, **tagger_kwargs)
    except ImageDecodeError as e:  # a bad input, not a bad setting: reported like a failed result (exit 1)
        return TagResult(path=image, tags=[], error=str(e))
    except TagloopError as e:  # a model problem: one sentence, exit code 2
        raise to_command_error(e) from None


_TAGGER_PARAMS, _TAG_ONE = _tagger_integration()
prompt_command.params.extend(_TAGGER_PARAMS)
