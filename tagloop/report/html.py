"""Self-contained HTML pages for the reproduction report (``report.html``) and the run's index (``index.html``).

The pages need nothing but the file itself: thumbnails are embedded as ``data:`` URIs (made with Pillow, at most
256 px on the long side), the style sheet and the small sorting script are inline, and a Content-Security-Policy
forbids every network load. Every string from the report is escaped with :func:`html.escape`.

Hooks for tests and scripts (stable):

- variant rows: ``<tr data-variant-id="ID">`` in ``table#variants``; each score cell
  ``<td data-scorer="SCORER" data-metric="METRIC">`` holds the number with 3 decimals (``–`` for null) and the
  raw number in ``data-value`` (empty for null); position cells use ``data-metric="position.METRIC"``;
- variant detail cards: ``<article class="variant-card" data-variant-card="ID">``; missing tags are
  ``li.missing``, spurious tags ``li.spurious``;
- sortable headers: ``<th data-col="N" data-sort-key="...">`` (click: numbers sort high to low first, text A to Z;
  a second click reverses; nulls always last);
- the rounds chart: ``<svg id="rounds-chart">``;
- index rows: ``<tr data-stem="STEM">`` in ``table#sources``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

THUMB_SIZE = 256
NULL = "–"

#: The metrics of a tagger scorer, in column order: (key, short header, full name).
TAGGER_METRICS: tuple[tuple[str, str, str], ...] = (
    ("f1", "F1", "F1"),
    ("recall", "rec", "recall"),
    ("precision", "prec", "precision"),
    ("jaccard", "jac", "Jaccard"),
    ("soft_recall", "soft", "soft recall"),
    ("weighted_jaccard", "wjac", "weighted Jaccard"),
    ("cosine", "cos", "cosine"),
    ("group_agreement", "grp", "group agreement"),
)
#: The metrics of the CLIP scorer.
CLIP_METRICS: tuple[tuple[str, str, str], ...] = (("cosine", "cos", "cosine"),)
#: The structure score (Canny edge F1 against the source, tagloop.report.structure).
STRUCTURE_METRICS: tuple[tuple[str, str, str], ...] = (("f1", "edge F1", "edge F1 against the source"),)

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_CSS = """
:root { --missing: #b3261e; --missing-bg: #fde8e7; --spurious: #7a4f00; --spurious-bg: #fff1cc; --line: #d6d9de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
  padding: 16px 24px 48px; color: #1d232a; background: #f7f8fa; }
h1 { font-size: 20px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 6px; }
h4 { font-size: 14px; margin: 10px 0 4px; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
pre.prompt { white-space: pre-wrap; word-break: break-word; background: #fff; border: 1px solid var(--line);
  padding: 6px 8px; margin: 2px 0 8px; }
.meta { color: #5b6570; font-size: 12.5px; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12.5px; }
.status-ok { background: #dff3e4; color: #1e6b34; }
.status-no_tags { background: #fff1cc; color: #7a4f00; }
.status-failed { background: #fde8e7; color: #b3261e; }
.message { font-size: 15px; padding: 8px 12px; border-left: 4px solid #7a4f00; background: #fff; margin: 8px 0; }
.message.failed { border-left-color: #b3261e; }
.note { padding: 6px 12px; border-left: 4px solid #1f77b4; background: #eef5fc; margin: 8px 0; }
.error { color: #b3261e; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid var(--line); padding: 3px 6px; vertical-align: middle; }
th { background: #eef0f3; font-weight: 600; white-space: nowrap; }
td.vid { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th[data-col] { cursor: pointer; user-select: none; }
th[data-col]:hover { background: #e0e4ea; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
tfoot td { background: #f3f5f8; font-style: italic; }
tr.best td { background: #f2f9f3; }
.thumb { display: block; max-width: 256px; max-height: 256px; border: 1px solid var(--line); background: #fff; }
table .thumb { max-width: 72px; max-height: 72px; }
.placeholder { display: flex; align-items: center; justify-content: center; width: 128px; min-height: 72px;
  padding: 4px; border: 1px dashed #9aa3ad; color: #5b6570; font-size: 11.5px; text-align: center;
  word-break: break-all; background: #fafbfc; }
table .placeholder { width: 72px; }
.pair { display: flex; gap: 12px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #5b6570; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.variant-card { background: #fff; border: 1px solid var(--line); padding: 10px 12px; }
.variant-card.best { border-color: #1e6b34; box-shadow: 0 0 0 1px #1e6b34; }
ul.tags { list-style: none; padding: 0; margin: 2px 0 6px; display: flex; flex-wrap: wrap; gap: 4px; }
ul.tags li { padding: 1px 6px; border-radius: 3px; font-size: 12.5px; }
li.missing { color: var(--missing); background: var(--missing-bg); border: 1px solid #f3b8b3; }
li.spurious { color: var(--spurious); background: var(--spurious-bg); border: 1px solid #f0d48a; }
li.missing .sc, li.spurious .sc { color: #5b6570; font-size: 11.5px; }
.legend span { margin-right: 12px; }
.kv td:first-child { color: #5b6570; }
svg text { font-family: system-ui, sans-serif; font-size: 11px; fill: #1d232a; }
"""

_SORT_JS = """
(function () {
  "use strict";
  function cellKey(row, col) {
    var cell = row.cells[col];
    if (!cell) { return null; }
    var v = cell.getAttribute("data-value");
    return (v === null || v === "") ? null : v;
  }
  function sortBy(th) {
    var table = th.closest("table");
    var body = table.tBodies[0];
    var col = parseInt(th.getAttribute("data-col"), 10);
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var dir;
    if (current === "descending") { dir = "ascending"; }
    else if (current === "ascending") { dir = "descending"; }
    else { dir = numeric ? "descending" : "ascending"; }
    var heads = table.querySelectorAll("th[data-col]");
    for (var h = 0; h < heads.length; h++) { heads[h].setAttribute("aria-sort", "none"); }
    th.setAttribute("aria-sort", dir);
    var items = [];
    for (var r = 0; r < body.rows.length; r++) {
      var key = cellKey(body.rows[r], col);
      if (key !== null && numeric) { key = parseFloat(key); if (isNaN(key)) { key = null; } }
      items.push({ row: body.rows[r], index: r, key: key });
    }
    items.sort(function (a, b) {
      if (a.key === null || b.key === null) {
        if (a.key === b.key) { return a.index - b.index; }
        return a.key === null ? 1 : -1;
      }
      var c = numeric ? a.key - b.key : String(a.key).localeCompare(String(b.key));
      if (dir === "descending") { c = -c; }
      return c !== 0 ? c : a.index - b.index;
    });
    for (var i = 0; i < items.length; i++) { body.appendChild(items[i].row); }
  }
  var heads = document.querySelectorAll("th[data-col]");
  for (var k = 0; k < heads.length; k++) {
    heads[k].addEventListener("click", function (ev) { sortBy(ev.currentTarget); });
    heads[k].addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(ev.currentTarget); }
    });
  }
})();
"""


# --- small helpers -----------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute (None becomes the empty string)."""
    return html.escape("" if value is None else str(value), quote=True)


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a mapping, else an empty dict (reports from failed runs may lack whole sections)."""
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    """``value`` if it is a list or tuple, else an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


def _is_num(value: Any) -> bool:
    """True for a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    """A number with 3 decimals; ``–`` for null or a non-number."""
    return f"{float(value):.3f}" if _is_num(value) else NULL


def _fmt_int(value: Any) -> str:
    """An integer as written; ``–`` for null."""
    if isinstance(value, bool) or value is None:
        return NULL
    if isinstance(value, int):
        return str(value)
    return _e(value)


def _raw(value: Any) -> str:
    """The sort key written into ``data-value``: the full number, or empty for null."""
    return repr(float(value)) if _is_num(value) else ""


def _class_token(value: Any) -> str:
    """A CSS class suffix made from a report string (anything but ``[a-z0-9_-]`` becomes ``_``)."""
    return re.sub(r"[^a-z0-9_-]", "_", str(value).lower()) or "unknown"


def _metrics_for(scorer: str) -> tuple[tuple[str, str, str], ...]:
    """The metric columns of one scorer: ``clip`` has only the cosine, every tagger scorer the full set."""
    if scorer == "structure":
        return STRUCTURE_METRICS
    return CLIP_METRICS if scorer == "clip" else TAGGER_METRICS


def _tagger_scorers(scorers: Sequence[str]) -> list[str]:
    """The scorers that tag (everything but ``clip`` and ``structure``)."""
    return [s for s in scorers if s not in ("clip", "structure")]


def _page(title: str, body: str) -> str:
    """The whole document around ``body``: charset, CSP, inline style and script."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="tagloop">\n<title>{_e(title)}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n<script>{_SORT_JS}</script>\n</body>\n</html>\n"
    )


# --- thumbnails --------------------------------------------------------------------------------------------------


def _thumbnail_uri(path: Path) -> str:
    """A JPEG ``data:`` URI of ``path`` at most :data:`THUMB_SIZE` px on the long side (raises on any failure)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (THUMB_SIZE, THUMB_SIZE))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            flat = Image.new("RGB", im.size, (255, 255, 255))
            flat.paste(im, mask=im.getchannel("A"))
            im = flat
        else:
            im = im.convert("RGB")
        im.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Thumbs:
    """Makes each embedded thumbnail once per page and renders ``<img>`` or a text placeholder."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._cache: dict[str, tuple[str | None, str]] = {}

    def _load(self, file: Any) -> tuple[str | None, str]:
        """``(data URI or None, reason)`` for a file named in the report."""
        if not isinstance(file, str) or not file:
            return None, "no image file"
        if file not in self._cache:
            path = self.base_dir / file
            try:
                if not path.is_file():
                    self._cache[file] = (None, "image not found")
                else:
                    self._cache[file] = (_thumbnail_uri(path), "")
            except Exception:  # noqa: BLE001 - any unreadable image becomes a placeholder, never an error
                self._cache[file] = (None, "image could not be read")
        return self._cache[file]

    def img(self, file: Any, alt: str) -> str:
        """An ``<img class="thumb">`` for ``file``, or ``<div class="thumb placeholder">`` saying why not."""
        uri, reason = self._load(file)
        if uri is None:
            name = f": {file}" if isinstance(file, str) and file else ""
            return f'<div class="thumb placeholder" role="img" aria-label="{_e(alt)}">{_e(reason + name)}</div>'
        return f'<img class="thumb" src="{uri}" alt="{_e(alt)}">'


# --- report sections ---------------------------------------------------------------------------------------------


def _header(report: Mapping[str, Any]) -> str:
    """Title, status, message, note and the page's provenance line."""
    source = _dict(report.get("source"))
    status = report.get("status") or "unknown"
    kind = report.get("kind") or "tagloop-reproduce-report"
    heading = "Comparison report" if kind == "tagloop-compare-report" else "Reproduction report"
    parts = [
        f'<header>\n<h1>{_e(heading)}: <code id="source-path">{_e(source.get("path") or source.get("file") or "?")}</code></h1>',
        f'<p class="meta"><span class="status status-{_class_token(status)}" id="status">{_e(status)}</span> '
        f"{_e(kind)} · schema {_e(report.get('schema_version'))} · tagloop {_e(report.get('tagloop_version') or '?')}"
        f" · created {_e(report.get('created') or '?')}</p>",
    ]
    message = report.get("message")
    if message:
        cls = "message failed" if status == "failed" else "message"
        parts.append(f'<p class="{cls}" id="message">{_e(message)}</p>')
    note = report.get("note")
    if note:
        parts.append(f'<p class="note" id="note">{_e(note)}</p>')
    parts.append("</header>")
    return "\n".join(parts)


def _source_section(report: Mapping[str, Any], thumbs: _Thumbs) -> str:
    """The source image, its facts, and the models."""
    source = _dict(report.get("source"))
    sha = source.get("sha256")
    rows = [
        ("path", _e(source.get("path"))),
        ("file", _e(source.get("file"))),
        ("size", f"{_fmt_int(source.get('width'))} × {_fmt_int(source.get('height'))}"),
        ("sha256", f"<code>{_e(sha)}</code>" if sha else NULL),
    ]
    facts = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    models = _dict(report.get("models"))
    model_rows = []
    for role, model in models.items():
        m = _dict(model)
        if not m:
            model_rows.append(f'<tr><td>{_e(role)}</td><td colspan="3">{NULL}</td></tr>')
            continue
        msha = m.get("sha256")
        model_rows.append(
            f"<tr><td>{_e(role)}</td><td><code>{_e(m.get('source'))}</code></td><td>{_e(m.get('family'))}</td>"
            f"<td><code>{_e(str(msha)[:16]) if msha else NULL}</code></td></tr>"
        )
    models_html = (
        '<table class="kv" id="models"><thead><tr><th>model</th><th>source</th><th>family</th><th>sha256</th></tr></thead>'
        f"<tbody>{''.join(model_rows)}</tbody></table>"
        if model_rows
        else ""
    )
    return (
        '<section id="source">\n<h2>Source</h2>\n<div class="pair">'
        f"<figure>{thumbs.img(source.get('file'), 'source image')}<figcaption>source</figcaption></figure>"
        f'<div><table class="kv">{facts}</table><br>{models_html}</div></div>\n</section>'
    )


def _variant_file(report: Mapping[str, Any], variant: Mapping[str, Any]) -> Any:
    """The variant's image file: ``images[id]["file"]``, else the variant's own ``file``."""
    image = _dict(_dict(report.get("images")).get(variant.get("id")))
    return image.get("file") or variant.get("file")


def _variant_error(report: Mapping[str, Any], variant: Mapping[str, Any]) -> Any:
    """The variant's error, from the variant or its image record."""
    image = _dict(_dict(report.get("images")).get(variant.get("id")))
    return variant.get("error") or image.get("error")


def _num_td(value: Any, attrs: str = "") -> str:
    """A right-aligned number cell with its sort key."""
    return f'<td class="num"{attrs} data-value="{_raw(value)}">{_fmt(value)}</td>'


def _variants_table(report: Mapping[str, Any], thumbs: _Thumbs) -> str:
    """The sortable table: one row per variant, a column per scorer and metric and per position, calibration below."""
    variants = [_dict(v) for v in _list(report.get("variants"))]
    if not variants:
        return (
            '<section id="variants-section">\n<h2>Variants</h2>\n<p id="no-variants">No variants were generated.</p>\n</section>'
        )
    scorers = [str(s) for s in _list(report.get("scorers"))]
    best_id = _dict(report.get("best")).get("id")

    head1 = [
        '<th rowspan="2">image</th>',
        '<th rowspan="2" data-col="1" data-type="text" data-sort-key="id" tabindex="0" aria-sort="none">variant</th>',
        '<th rowspan="2" data-col="2" data-type="num" data-sort-key="round" tabindex="0" aria-sort="none">round</th>',
        '<th rowspan="2" data-col="3" data-type="num" data-sort-key="seed" tabindex="0" aria-sort="none">seed</th>',
        '<th rowspan="2" data-col="4" data-type="text" data-sort-key="error" tabindex="0" aria-sort="none">error</th>',
    ]
    head2: list[str] = []
    col = 5
    for scorer in scorers:
        metrics = _metrics_for(scorer)
        head1.append(f'<th colspan="{len(metrics)}" class="group">{_e(scorer)}: score</th>')
        head1.append(f'<th colspan="{len(metrics)}" class="group">{_e(scorer)}: position</th>')
        for prefix, label_prefix in (("", ""), ("position.", "position of ")):
            for key, short, full in metrics:
                head2.append(
                    f'<th data-col="{col}" data-type="num" data-sort-key="{_e(scorer)}.{prefix}{key}" tabindex="0" '
                    f'aria-sort="none" title="{_e(scorer)}: {label_prefix}{_e(full)}">{_e(short)}</th>'
                )
                col += 1

    rows = []
    for v in variants:
        vid = v.get("id")
        scores = _dict(v.get("scores"))
        error = _variant_error(report, v)
        cells = [
            f"<td>{thumbs.img(_variant_file(report, v), f'variant {vid}')}</td>",
            f'<td class="vid" data-value="{_e(vid)}"><a href="#card-{_e(vid)}"><code>{_e(vid)}</code></a>{_style_label(v)}</td>',
            f'<td class="num" data-value="{_raw(v.get("round"))}">{_fmt_int(v.get("round"))}</td>',
            f'<td class="num" data-value="{_raw(v.get("seed"))}">{_fmt_int(v.get("seed"))}</td>',
            f'<td class="error" data-value="{_e(error)}">{_e(error)}</td>',
        ]
        for scorer in scorers:
            metrics = _metrics_for(scorer)
            sc = _dict(scores.get(scorer))
            pos = _dict(sc.get("position"))
            for key, _short, _full in metrics:
                cells.append(_num_td(sc.get(key), f' data-scorer="{_e(scorer)}" data-metric="{key}"'))
            for key, _short, _full in metrics:
                # clip's position is one number, a tagger scorer's one per metric
                value = sc.get("position") if scorer in ("clip", "structure") and not pos else pos.get(key)
                cells.append(_num_td(value, f' data-scorer="{_e(scorer)}" data-metric="position.{key}"'))
        best = ' class="best"' if vid is not None and vid == best_id else ""
        rows.append(f'<tr data-variant-id="{_e(vid)}"{best}>{"".join(cells)}</tr>')

    calibration = _dict(report.get("calibration"))
    foot = []
    for which in ("ceiling", "floor"):
        cells = [f'<td colspan="5">{which} (mean)</td>']
        for scorer in scorers:
            metrics = _metrics_for(scorer)
            block = calibration.get(scorer)
            part = _dict(block).get(which) if isinstance(block, Mapping) else None
            if which == "floor" and isinstance(block, Mapping) and part is None:
                cells.append(
                    f'<td colspan="{len(metrics)}" data-calibration="floor" data-cal-scorer="{_e(scorer)}">no floor folder</td>'
                )
            else:
                mean = _dict(_dict(part).get("mean"))
                for key, _short, _full in metrics:
                    cells.append(
                        f'<td class="num" data-calibration="{which}" data-cal-scorer="{_e(scorer)}" data-cal-metric="{key}">'
                        f"{_fmt(mean.get(key))}</td>"
                    )
            cells.append(f'<td colspan="{len(metrics)}"></td>')
        foot.append(f"<tr>{''.join(cells)}</tr>")

    return (
        '<section id="variants-section">\n<h2>Variants</h2>\n'
        '<p class="meta">Click a column header to sort (numbers high to low first; click again to reverse; '
        "empty values last). Position = (score − floor) / (ceiling − floor).</p>\n"
        '<div class="scroll"><table id="variants">'
        f"<thead><tr>{''.join(head1)}</tr><tr>{''.join(head2)}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody><tfoot>{''.join(foot)}</tfoot></table></div>\n</section>"
    )


def _tag_list(items: list[Any], kind: str) -> str:
    """Missing (``kind="missing"``) or spurious tags as coloured chips with both scores."""
    if not items:
        return f'<p class="meta">no {kind} tags</p>'
    lis = []
    for item in items:
        it = _dict(item)
        lis.append(
            f'<li class="{kind}" data-tag="{_e(it.get("tag"))}">{_e(it.get("tag"))} '
            f'<span class="sc">source {_fmt(it.get("source_score"))} · variant {_fmt(it.get("variant_score"))}</span></li>'
        )
    return f'<ul class="tags {kind}-tags">{"".join(lis)}</ul>'


def _groups_table(groups: Mapping[str, Any]) -> str:
    """One row per applicable group: exclusive groups show the two top tags, open groups the recall."""
    if not groups:
        return '<p class="meta">no applicable groups</p>'
    rows = []
    for name, group in groups.items():
        g = _dict(group)
        if g.get("kind") == "exclusive":
            detail = f"source <code>{_e(g.get('source'))}</code> · variant <code>{_e(g.get('variant')) or NULL}</code>"
            value = _fmt(g.get("agree"))
            label = "agree"
        else:
            found = ", ".join(_e(k) for k in _list(g.get("found"))) or NULL
            detail = f"source {', '.join(_e(k) for k in _list(g.get('source'))) or NULL} · found {found}"
            value = _fmt(g.get("recall"))
            label = "recall"
        rows.append(
            f'<tr data-group="{_e(name)}"><td>{_e(name)}</td><td>{_e(g.get("kind"))}</td><td>{detail}</td>'
            f'<td>{label}</td><td class="num">{value}</td></tr>'
        )
    return f'<table class="groups"><tbody>{"".join(rows)}</tbody></table>'


def _style_label(variant: Mapping[str, Any]) -> str:
    """A compared prompt style's variant: its style beside its id (nothing for a round's variant)."""
    style = variant.get("style")
    return f' <span class="meta style-label" data-style="{_e(style)}">{_e(style)}</span>' if style else ""


def _round_or_style(variant: Mapping[str, Any]) -> str:
    style = variant.get("style")
    return f"style {_e(style)}" if style else f"round {_fmt_int(variant.get('round'))}"


def _styles_section(report: Mapping[str, Any]) -> str:
    """``--compare-styles``: one row per prompt style (the same seeds), its prompt and mean scores."""
    styles = _dict(report.get("styles"))
    by_style = _dict(styles.get("by_style"))
    if not by_style:
        return ""
    rows = []
    for name, entry in by_style.items():
        e = _dict(entry)
        mean = _dict(_dict(e.get("mean")).get("tagger"))
        best = _dict(e.get("best"))
        mark = ' class="best"' if name == styles.get("best") else ""
        base = " (the run's)" if name == styles.get("base") else ""
        cells = (
            ("f1", mean.get("f1")),
            ("recall", mean.get("recall")),
            ("precision", mean.get("precision")),
            ("best_f1", best.get("f1")),
        )
        rows.append(
            f'<tr data-style="{_e(name)}"{mark}><td>{_e(name)}{_e(base)}</td>'
            f'<td><pre class="prompt">{_e(e.get("prompt"))}</pre></td>'
            + "".join(_num_td(value, f' data-metric="{key}"') for key, value in cells)
            + f"<td>{len(_list(e.get('variants')))}</td></tr>"
        )
    return (
        '<section id="styles">\n<h2>Prompt styles</h2>\n'
        f'<p class="meta">Round 0 with each prompt style, the same seeds; best on mean F1: {_e(styles.get("best"))}. '
        "Refinement rounds continue from the run's own style.</p>\n"
        '<div class="scroll"><table id="styles-table"><thead><tr><th>style</th><th>prompt</th><th>mean F1</th>'
        "<th>mean recall</th><th>mean precision</th><th>best F1</th><th>variants</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>\n</section>"
    )


def _variant_cards(report: Mapping[str, Any], thumbs: _Thumbs) -> str:
    """A card per variant: source beside variant, the scores in words, missing and spurious tags, groups."""
    variants = [_dict(v) for v in _list(report.get("variants"))]
    if not variants:
        return ""
    scorers = [str(s) for s in _list(report.get("scorers"))]
    source_file = _dict(report.get("source")).get("file")
    best_id = _dict(report.get("best")).get("id")
    cards = []
    for v in variants:
        vid = v.get("id")
        scores = _dict(v.get("scores"))
        error = _variant_error(report, v)
        blocks = [] if scores else ['<p class="meta">not scored</p>']
        for scorer in scorers if scores else []:
            sc = _dict(scores.get(scorer))
            if scorer == "clip":
                blocks.append(f"<h4>clip</h4><p>cosine {_fmt(sc.get('cosine'))} · position {_fmt(sc.get('position'))}</p>")
                continue
            if scorer == "structure":
                blocks.append(f"<h4>structure</h4><p>edge F1 {_fmt(sc.get('f1'))} · position {_fmt(sc.get('position'))}</p>")
                continue
            pos = _dict(sc.get("position"))
            line = " · ".join(f"{_e(full)} {_fmt(sc.get(key))} ({_fmt(pos.get(key))})" for key, _s, full in TAGGER_METRICS)
            counts = (
                f"source {_fmt_int(sc.get('n_source'))} tags · variant {_fmt_int(sc.get('n_variant'))} · "
                f"common {_fmt_int(sc.get('n_common'))}"
            )
            blocks.append(
                f'<div class="scorer-block" data-card-scorer="{_e(scorer)}"><h4>{_e(scorer)}</h4>'
                f'<p class="meta">{line}<br>score (position) · {counts}</p>'
                f"<h4>missing</h4>{_tag_list(_list(sc.get('missing')), 'missing')}"
                f"<h4>spurious</h4>{_tag_list(_list(sc.get('spurious')), 'spurious')}"
                f"<h4>groups</h4>{_groups_table(_dict(sc.get('groups')))}</div>"
            )
        err = f'<p class="error">error: {_e(error)}</p>' if error else ""
        best = " best" if vid is not None and vid == best_id else ""
        cards.append(
            f'<article class="variant-card{best}" id="card-{_e(vid)}" data-variant-card="{_e(vid)}">'
            f'<h3><code>{_e(vid)}</code> <span class="meta">{_round_or_style(v)} · seed '
            f"{_fmt_int(v.get('seed'))}{' · best' if best else ''}</span></h3>"
            f'<div class="pair"><figure>{thumbs.img(source_file, "source image")}<figcaption>source</figcaption></figure>'
            f"<figure>{thumbs.img(_variant_file(report, v), f'variant {vid}')}<figcaption>{_e(vid)}</figcaption></figure></div>"
            f"{err}{''.join(blocks)}</article>"
        )
    return '<section id="variant-details">\n<h2>Variant details</h2>\n<div class="cards">' + "".join(cards) + "</div>\n</section>"


def _prompt_section(report: Mapping[str, Any]) -> str:
    """The first composed prompt, what the filters removed, and every round's prompt and changes."""
    prompt = _dict(report.get("prompt"))
    parts = ['<section id="prompt">\n<h2>Prompt</h2>']
    if prompt:
        parts.append(f'<h4>positive</h4><pre class="prompt" id="prompt-positive">{_e(prompt.get("positive"))}</pre>')
        parts.append(f'<h4>negative</h4><pre class="prompt" id="prompt-negative">{_e(prompt.get("negative"))}</pre>')
        tokens = _dict(prompt.get("tokens"))
        if tokens:
            pos_t, neg_t = _dict(tokens.get("positive")), _dict(tokens.get("negative"))
            parts.append(
                f'<p class="meta">tokens: positive {_fmt_int(pos_t.get("tokens"))}, negative {_fmt_int(neg_t.get("tokens"))}'
                f" · preset {_e(prompt.get('preset'))}</p>"
            )
        removals = _list(prompt.get("removals"))
        if removals:
            lis = "".join(
                f"<li><code>{_e(_dict(r).get('tag'))}</code> {_e(_dict(r).get('action'))} by {_e(_dict(r).get('filter'))}: "
                f"{_e(_dict(r).get('reason'))}</li>"
                for r in removals
            )
            parts.append(f"<details><summary>{len(removals)} filter action(s)</summary><ul>{lis}</ul></details>")
        warnings = _list(prompt.get("warnings"))
        if warnings:
            parts.append("<ul>" + "".join(f'<li class="error">{_e(w)}</li>' for w in warnings) + "</ul>")
    else:
        parts.append('<p class="meta">no prompt was composed</p>')

    excluded = _list(report.get("excluded"))
    if excluded:
        parts.append(f'<p class="meta">never scored (injected by the composer): {", ".join(_e(x) for x in excluded)}</p>')

    tagger_scorers = _tagger_scorers([str(s) for s in _list(report.get("scorers"))])
    for rnd in _list(report.get("rounds")):
        r = _dict(rnd)
        k = r.get("round")
        means = _dict(r.get("mean"))
        mean_txt = ", ".join(f"{_e(s)} {_fmt(_dict(means.get(s)).get('f1'))}" for s in tagger_scorers)
        changes = _list(r.get("changes"))
        if changes:
            lis = []
            for ch in changes:
                c = _dict(ch)
                lis.append(
                    f"<li><code>{_e(c.get('tag'))}</code> {_e(c.get('change'))} {_fmt(c.get('from'))} → {_fmt(c.get('to'))}: "
                    f"{_e(c.get('why'))}</li>"
                )
            changes_html = f'<ul class="changes">{"".join(lis)}</ul>'
        else:
            changes_html = '<p class="meta">no changes (the first prompt)</p>' if k == 0 else '<p class="meta">no changes</p>'
        parts.append(
            f'<div class="round" data-round="{_e(k)}"><h3>Round {_fmt_int(k)}</h3>'
            f'<p class="meta">{len(_list(r.get("variants")))} variant(s) · mean F1 {mean_txt or NULL}</p>'
            f'<h4>positive</h4><pre class="prompt">{_e(r.get("positive"))}</pre>'
            f'<h4>negative</h4><pre class="prompt">{_e(r.get("negative"))}</pre>'
            f"<h4>changes</h4>{changes_html}</div>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _rounds_chart(report: Mapping[str, Any]) -> str:
    """An inline SVG: mean F1 per round, one polyline with points per tagger scorer."""
    rounds = [_dict(r) for r in _list(report.get("rounds"))]
    if not rounds:
        return ""
    scorers = _tagger_scorers([str(s) for s in _list(report.get("scorers"))])
    width, height = 520, 240
    left, right, top, bottom = 52, 110, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(rounds)

    def x_at(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else i * plot_w / (n - 1))

    def y_at(v: float) -> float:
        return top + plot_h * (1.0 - min(max(v, 0.0), 1.0))

    out = [
        f'<svg id="rounds-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="mean F1 per round">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#d6d9de"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_at(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eceef1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    for i, r in enumerate(rounds):
        x = x_at(i)
        out.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#5b6570"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_e(r.get("round", i))}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">round</text>')
    out.append(f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">mean F1</text>')
    for si, scorer in enumerate(scorers):
        colour = _COLOURS[si % len(_COLOURS)]
        points = []
        for i, r in enumerate(rounds):
            value = _dict(_dict(r.get("mean")).get(scorer)).get("f1")
            if _is_num(value):
                points.append((x_at(i), y_at(float(value)), r.get("round", i), value))
        if len(points) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _k, _v in points)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2" data-scorer="{_e(scorer)}"/>')
        for x, y, k, value in points:
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}" data-scorer="{_e(scorer)}" data-round="{_e(k)}">'
                f"<title>{_e(scorer)} round {_e(k)}: {_fmt(value)}</title></circle>"
            )
        ly = top + 12 + si * 18
        lx = left + plot_w + 12
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 18}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 24}" y="{ly}">{_e(scorer)}</text>')
    out.append("</svg>")
    return '<section id="rounds">\n<h2>Rounds</h2>\n' + "".join(out) + "\n</section>"


def _summary_section(report: Mapping[str, Any], thumbs: _Thumbs) -> str:
    """Mean/std/min/max per scorer and metric, and the best variant with its reason."""
    summary = _dict(report.get("summary"))
    scorers = [str(s) for s in _list(report.get("scorers"))]
    parts = ['<section id="summary">\n<h2>Summary</h2>']
    best = _dict(report.get("best"))
    if best:
        parts.append(
            f'<div class="pair" id="best"><figure>{thumbs.img(best.get("file"), "best variant")}</figure><div>'
            f'<h3>Best: <a href="#card-{_e(best.get("id"))}"><code>{_e(best.get("id"))}</code></a></h3>'
            f"<p>round {_fmt_int(best.get('round'))} · seed {_fmt_int(best.get('seed'))} · F1 {_fmt(best.get('f1'))}</p>"
            f'<p id="best-why">{_e(best.get("why"))}</p></div></div>'
        )
    else:
        parts.append('<p class="meta">no best variant</p>')
    for scorer in scorers:
        block = _dict(summary.get(scorer))
        if not block:
            continue
        metrics = _metrics_for(scorer)
        head = "".join(f'<th title="{_e(full)}">{_e(short)}</th>' for _k, short, full in metrics)
        rows = []
        for stat in ("mean", "std", "min", "max"):
            values = _dict(block.get(stat))
            cells = "".join(f'<td class="num">{_fmt(values.get(key))}</td>' for key, _s, _f in metrics)
            rows.append(f"<tr><td>{stat}</td>{cells}</tr>")
        parts.append(
            f'<h4>{_e(scorer)}</h4><table class="summary" data-summary-scorer="{_e(scorer)}">'
            f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _calibration_section(report: Mapping[str, Any]) -> str:
    """Per scorer: the ceiling mean and each copy, and the floor mean (or that there was no floor folder)."""
    calibration = _dict(report.get("calibration"))
    scorers = [str(s) for s in _list(report.get("scorers"))]
    parts = ['<section id="calibration">\n<h2>Calibration</h2>']
    if not calibration:
        parts.append('<p class="meta">no calibration</p>')
    for scorer in scorers:
        if scorer not in calibration:
            continue
        block = _dict(calibration.get(scorer))
        metrics = _metrics_for(scorer)
        ceiling = _dict(block.get("ceiling"))
        floor = block.get("floor")
        columns: list[tuple[str, dict[str, Any]]] = [("ceiling mean", _dict(ceiling.get("mean")))]
        columns += [(str(cid), _dict(m)) for cid, m in _dict(ceiling.get("copies")).items()]
        head = "".join(f"<th>{_e(name)}</th>" for name, _m in columns)
        if isinstance(floor, Mapping):
            fl = _dict(floor)
            n_floor = len(_dict(fl.get("copies")))
            head += f"<th>floor mean ({n_floor} image{'s' if n_floor != 1 else ''})</th>"
        else:
            head += "<th>floor</th>"
        rows = []
        for i, (key, _short, full) in enumerate(metrics):
            cells = "".join(f'<td class="num">{_fmt(m.get(key))}</td>' for _n, m in columns)
            if isinstance(floor, Mapping):
                cells += f'<td class="num">{_fmt(_dict(_dict(floor).get("mean")).get(key))}</td>'
            elif i == 0:
                cells += f'<td rowspan="{len(metrics)}" class="no-floor">no floor folder</td>'
            rows.append(f"<tr><td>{_e(full)}</td>{cells}</tr>")
        parts.append(
            f'<h4>{_e(scorer)}</h4><table class="calibration" data-calibration-scorer="{_e(scorer)}">'
            f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _source_tags_section(report: Mapping[str, Any]) -> str:
    """The source's tags per tagger scorer (collapsed), with the threshold and the rating."""
    source_tags = _dict(report.get("source_tags"))
    if not source_tags:
        return ""
    parts = ['<section id="source-tags">\n<h2>Source tags</h2>']
    for scorer, block in source_tags.items():
        b = _dict(block)
        tags = _list(b.get("tags"))
        rows = "".join(
            f"<tr><td>{_e(_dict(t).get('name'))}</td><td>{_e(_dict(t).get('category'))}</td>"
            f'<td class="num">{_fmt(_dict(t).get("score"))}</td></tr>'
            for t in tags
        )
        rating = ", ".join(f"{_e(k)} {_fmt(v)}" for k, v in _dict(b.get("rating")).items()) or NULL
        threshold = b.get("threshold")
        threshold_txt = _fmt(threshold) if _is_num(threshold) or threshold is None else _e(json.dumps(threshold))
        parts.append(
            f"<details><summary>{_e(scorer)}: {len(tags)} tags, {len(_list(b.get('set')))} scored · threshold "
            f"{threshold_txt} · rating {rating}</summary>"
            f"<table><thead><tr><th>tag</th><th>category</th><th>score</th></tr></thead><tbody>{rows}</tbody></table></details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _timings_and_settings(report: Mapping[str, Any]) -> str:
    """Timings in seconds and the settings as JSON (collapsed)."""
    timings = _dict(report.get("timings"))
    parts = ['<section id="timings">\n<h2>Timings</h2>']
    if timings:
        rows = "".join(f'<tr><td>{_e(k)}</td><td class="num">{_fmt(v)} s</td></tr>' for k, v in timings.items())
        parts.append(f'<table class="kv"><tbody>{rows}</tbody></table>')
    else:
        parts.append('<p class="meta">no timings</p>')
    settings = report.get("settings")
    if settings:
        text = json.dumps(settings, ensure_ascii=False, indent=2, sort_keys=True, default=str)
        parts.append(f'<h2>Settings</h2><details><summary>settings</summary><pre class="prompt">{_e(text)}</pre></details>')
    parts.append("</section>")
    return "\n".join(parts)


def render_report_html(report: dict, base_dir: Path | str) -> str:
    """Render one source's ``report.json`` dict as one self-contained HTML page.

    ``base_dir`` is the folder that the report's file names (``source.file``, each variant's file) are relative
    to, normally ``OUT/<stem>/``. Images are embedded as thumbnails; a missing or unreadable image becomes a text
    placeholder. Partial reports (``no_tags``, ``failed``) render what they have, with their message up front.
    """
    thumbs = _Thumbs(Path(base_dir))
    source = _dict(report.get("source"))
    title = f"tagloop report: {source.get('path') or source.get('file') or '?'}"
    sections = [
        _header(report),
        _source_section(report, thumbs),
        _summary_section(report, thumbs) if report.get("variants") or report.get("best") else "",
        _styles_section(report),
        _variants_table(report, thumbs),
        _rounds_chart(report),
        _calibration_section(report) if report.get("calibration") else "",
        _prompt_section(report),
        _variant_cards(report, thumbs),
        _source_tags_section(report),
        _timings_and_settings(report),
    ]
    return _page(title, "\n".join(s for s in sections if s))


def render_index_html(index: dict) -> str:
    """Render ``index.json`` as a sortable table of sources, each linking to ``<stem>/report.html``."""
    sources = [_dict(s) for s in _list(index.get("sources"))]
    counts: dict[str, int] = {}
    for s in sources:
        counts[str(s.get("status"))] = counts.get(str(s.get("status")), 0) + 1
    count_txt = ", ".join(f"{_e(k)} {v}" for k, v in sorted(counts.items()))
    best_attr, mean_attr = ' data-metric="best_f1"', ' data-metric="mean_f1"'
    rows = []
    for s in sources:
        stem = s.get("stem")
        status = s.get("status") or "unknown"
        href = quote(str(stem)) + "/report.html"
        rows.append(
            f'<tr data-stem="{_e(stem)}">'
            f'<td data-value="{_e(stem)}"><a href="{_e(href)}">{_e(stem)}</a></td>'
            f'<td data-value="{_e(s.get("path"))}"><code>{_e(s.get("path"))}</code></td>'
            f'<td data-value="{_e(status)}"><span class="status status-{_class_token(status)}">{_e(status)}</span></td>'
            f'<td data-value="{_e(s.get("message"))}">{_e(s.get("message"))}</td>'
            f"{_num_td(s.get('best_f1'), best_attr)}{_num_td(s.get('mean_f1'), mean_attr)}</tr>"
        )
    head = "".join(
        f'<th data-col="{i}" data-type="{kind}" data-sort-key="{key}" tabindex="0" aria-sort="none">{label}</th>'
        for i, (key, label, kind) in enumerate(
            (
                ("stem", "source", "text"),
                ("path", "path", "text"),
                ("status", "status", "text"),
                ("message", "message", "text"),
                ("best_f1", "best F1", "num"),
                ("mean_f1", "mean F1", "num"),
            )
        )
    )
    body = (
        "<header><h1>tagloop reproduction: index</h1>"
        f'<p class="meta">{len(sources)} source(s){" · " + count_txt if count_txt else ""} · schema '
        f"{_e(index.get('schema_version'))}</p></header>\n"
        '<p class="meta">Click a column header to sort (numbers high to low first; click again to reverse; empty values last).</p>\n'
        f'<div class="scroll"><table id="sources"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )
    if not sources:
        body += '\n<p id="no-sources">No sources.</p>'
    return _page("tagloop reproduction: index", body)
