"""The HTML report and index: pure-Python checks of the markup, then a real headless Chromium (Playwright).

The browser tests skip when Chromium or Playwright is missing, unless ``TAGLOOP_REQUIRE_BROWSER=1`` (CI sets it),
in which case they fail: CI must not pass by skipping them.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from tagloop.report.html import render_index_html, render_report_html

TAGGER_METRICS = ["f1", "recall", "precision", "jaccard", "soft_recall", "weighted_jaccard", "cosine", "group_agreement"]
SPECIAL_TAGS = ["hair_ribbon_(blue)", "<3", "black_&_white", "kaomoji_\\(o_o)"]
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VARIANT_IDS = ["r0-00000-11", "r0-00001-12", "r1-00000-11"]
ERROR_ID = "r0-00001-12"


# --- synthetic, schema-complete data --------------------------------------------------------------------------------


def _png(path: Path, size: tuple[int, int], tint: tuple[int, int, int]) -> None:
    """A small gradient PNG (many distinct colours, so a rendered page is visibly not blank)."""
    w, h = size
    gx = Image.linear_gradient("L").resize((w, h))
    gy = Image.linear_gradient("L").rotate(90).resize((w, h))
    flat = Image.new("L", (w, h), tint[2])
    im = Image.merge("RGB", (gx.point(lambda v: (v + tint[0]) % 256), gy.point(lambda v: (v + tint[1]) % 256), flat))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _metric(base: float, group: float | None = 0.5) -> dict[str, Any]:
    """A tagger metric object whose numbers are distinct per metric."""
    m: dict[str, Any] = {k: round(base + 0.011 * i, 6) for i, k in enumerate(TAGGER_METRICS)}
    m["group_agreement"] = group
    m.update({"n_source": 6, "n_variant": 5, "n_common": 4})
    return m


def _position(base: float) -> dict[str, Any]:
    pos: dict[str, Any] = {k: round(base + 0.007 * i, 6) for i, k in enumerate(TAGGER_METRICS)}
    pos["group_agreement"] = None
    return pos


def _scores(base: float, clip: float) -> dict[str, Any]:
    """A variant's ``scores``: tagger and judge metric objects with tags and groups, and clip."""
    out: dict[str, Any] = {}
    for scorer, shift in (("tagger", 0.0), ("judge", 0.05)):
        m = _metric(base + shift, group=None if scorer == "judge" else round(base + 0.2, 6))
        m["missing"] = [
            {"tag": "hair_ribbon_(blue)", "source_score": 0.912345, "variant_score": 0.0},
            {"tag": "<3", "source_score": 0.61, "variant_score": 0.2},
        ]
        m["spurious"] = [
            {"tag": "black_&_white", "variant_score": 0.77, "source_score": 0.03},
            {"tag": "kaomoji_\\(o_o)", "variant_score": 0.51, "source_score": 0.0},
        ]
        m["groups"] = {
            "hair_color": {"kind": "exclusive", "source": "blue_hair", "variant": "black_hair", "agree": 0.0},
            "clothing": {"kind": "open", "source": ["hair_ribbon_(blue)", "dress"], "found": ["dress"], "recall": 0.5},
        }
        m["position"] = _position(base + shift + 0.1)
        out[scorer] = m
    out["clip"] = {"cosine": clip, "position": round(clip - 0.1, 6)}
    return out


def _raw(tags: list[str]) -> dict[str, Any]:
    return {
        "edge_density": 0.12,
        "scores": [[t, "general", 0.9 - 0.1 * i] for i, t in enumerate(tags)],
        "rating": {"general": 0.9},
    }


def make_report(folder: Path, *, write_images: bool = True) -> dict[str, Any]:
    """A schema-version-1 report with 2 rounds and 3 variants (one failed), scorers tagger, judge and clip."""
    if write_images:
        _png(folder / "source.png", (320, 200), (0, 0, 40))
        _png(folder / "variants" / f"{VARIANT_IDS[0]}.png", (200, 300), (60, 10, 120))
        _png(folder / "variants" / f"{VARIANT_IDS[2]}.png", (240, 240), (120, 90, 200))
    variants = [
        {"id": VARIANT_IDS[0], "round": 0, "seed": 11, "file": f"variants/{VARIANT_IDS[0]}.png", "error": None},
        {"id": ERROR_ID, "round": 0, "seed": 12, "file": None, "error": "generation failed: out of memory <GPU> & more"},
        {"id": VARIANT_IDS[2], "round": 1, "seed": 11, "file": f"variants/{VARIANT_IDS[2]}.png", "error": None},
    ]
    variants[0]["scores"] = _scores(0.5, 0.81)
    variants[1]["scores"] = {}
    variants[2]["scores"] = _scores(0.7, 0.86)
    images: dict[str, Any] = {
        "source": {"kind": "source", "file": "source.png", "path": "in/a&b <src>.png", "error": None, "clip_cosine": 1.0},
        "ceiling-flip": {"kind": "ceiling", "file": None, "path": "", "error": None, "clip_cosine": 0.98},
    }
    for v in variants:
        images[v["id"]] = {
            "kind": "variant",
            "file": v["file"],
            "path": v["file"] or "",
            "error": v["error"],
            "outputs": {"tagger": _raw(SPECIAL_TAGS), "judge": _raw(SPECIAL_TAGS[:2])} if not v["error"] else {},
            "clip_cosine": None if v["error"] else v["scores"]["clip"]["cosine"],
        }
    images["source"]["outputs"] = {"tagger": _raw(SPECIAL_TAGS), "judge": _raw(SPECIAL_TAGS)}
    model = {"source": "SmilingWolf/wd-vit-tagger-v3", "family": "wd14", "sha256": "ab" * 32}
    return {
        "schema_version": 1,
        "kind": "tagloop-reproduce-report",
        "tagloop_version": "0.0.test",
        "created": "2024-01-01T00:00:00Z",
        "note": "random weights: <demo> & nothing real",
        "status": "ok",
        "message": None,
        "source": {"path": "in/a&b <src>.png", "file": "source.png", "width": 320, "height": 200, "sha256": "cd" * 32},
        "settings": {
            "variants": 2,
            "refine": 1,
            "seed": 11,
            "img2img": False,
            "denoise": None,
            "tag": {"threshold": None, "general_threshold": 0.35, "character_threshold": 0.85, "mcut": False},
            "prompt": {"filters": ["<3"], "preset": "default"},
            "generate": {"sampler": "euler", "steps": 2, "cfg_scale": 7.0, "width": 64, "height": 64},
            "score": {"prob_floor": 0.01, "groups": "builtin", "augment": ["flip", "crop", "jpeg"]},
        },
        "models": {
            "tagger": model,
            "judge": dict(model, source="judge/<model>"),
            "generator": dict(model, family="sd15"),
            "clip": None,
        },
        "scorers": ["tagger", "judge", "clip"],
        "images": images,
        "source_tags": {
            s: {
                "tags": [{"name": t, "score": 0.9 - 0.1 * i, "category": "general"} for i, t in enumerate(SPECIAL_TAGS)],
                "set": SPECIAL_TAGS,
                "threshold": 0.35,
                "rating": {"general": 0.9},
            }
            for s in ("tagger", "judge")
        },
        "excluded": ["masterpiece", "best_quality"],
        "prompt": {
            "path": "in/a&b <src>.png",
            "positive": "masterpiece, hair ribbon \\(blue\\), <3, black & white",
            "negative": "lowres, (worst quality:1.2)",
            "preset": "default",
            "removals": [{"tag": "<3", "filter": "blocklist", "action": "removed", "reason": "blocked: <3 & co"}],
            "tokens": {"positive": {"tokens": 14}, "negative": {"tokens": 8}},
            "warnings": [],
        },
        "rounds": [
            {
                "round": 0,
                "positive": "masterpiece, hair ribbon \\(blue\\), <3, black & white",
                "negative": "lowres, (worst quality:1.2)",
                "changes": [],
                "variants": VARIANT_IDS[:2],
                "mean": {"tagger": _metric(0.5), "judge": _metric(0.55), "clip": {"cosine": 0.81}},
                "std": {"tagger": _metric(0.0), "judge": _metric(0.0), "clip": {"cosine": 0.0}},
            },
            {
                "round": 1,
                "positive": "masterpiece, (hair ribbon \\(blue\\):1.2), <3",
                "negative": "lowres, (worst quality:1.2), black & white",
                "changes": [
                    {
                        "tag": "hair_ribbon_(blue)",
                        "change": "weight",
                        "from": 1.0,
                        "to": 1.2,
                        "why": "missing in 1 of 1 <variants>",
                    },
                    {"tag": "black_&_white", "change": "negative", "from": None, "to": 1.0, "why": "spurious & frequent"},
                ],
                "variants": VARIANT_IDS[2:],
                "mean": {"tagger": _metric(0.7), "judge": _metric(0.75), "clip": {"cosine": 0.86}},
                "std": {"tagger": _metric(0.0), "judge": _metric(0.0), "clip": {"cosine": 0.0}},
            },
        ],
        "variants": variants,
        "calibration": {
            "tagger": {
                "ceiling": {"mean": _metric(0.9), "copies": {"ceiling-flip": _metric(0.95), "ceiling-crop": _metric(0.85)}},
                "floor": {"mean": _metric(0.1), "copies": {"floor-0": _metric(0.1)}},
            },
            "judge": {"ceiling": {"mean": _metric(0.88), "copies": {"ceiling-flip": _metric(0.88)}}, "floor": None},
            "clip": {"ceiling": {"mean": {"cosine": 0.97}, "copies": {"ceiling-flip": {"cosine": 0.97}}}, "floor": None},
        },
        "summary": {
            "tagger": {"mean": _metric(0.6), "std": _metric(0.1), "min": _metric(0.5), "max": _metric(0.7)},
            "judge": {"mean": _metric(0.65), "std": _metric(0.1), "min": _metric(0.55), "max": _metric(0.75)},
            "clip": {"mean": {"cosine": 0.835}, "std": {"cosine": 0.025}, "min": {"cosine": 0.81}, "max": {"cosine": 0.86}},
        },
        "best": {
            "id": VARIANT_IDS[2],
            "round": 1,
            "seed": 11,
            "file": f"variants/{VARIANT_IDS[2]}.png",
            "f1": 0.7,
            "why": "highest tagger F1 (0.700) & fewest <missing> tags",
        },
        "timings": {
            "tag": 0.5,
            "compose": 0.01,
            "generate": 3.25,
            "retag": 0.4,
            "calibrate": 0.3,
            "judge": 0.2,
            "clip": 0.1,
            "total": 4.76,
        },
    }


def make_index() -> dict[str, Any]:
    """An ``index.json`` with an ok, a no_tags and a failed source (stems with awkward characters)."""
    return {
        "schema_version": 1,
        "sources": [
            {"stem": "alpha", "path": "in/alpha.png", "status": "ok", "message": None, "best_f1": 0.5, "mean_f1": 0.4},
            {
                "stem": "b&c <2>",
                "path": "in/b&c <2>.png",
                "status": "no_tags",
                "message": "the source gave no tags <none>",
                "best_f1": None,
                "mean_f1": None,
            },
            {"stem": "gamma", "path": "in/gamma.png", "status": "ok", "message": None, "best_f1": 0.8, "mean_f1": 0.6},
            {
                "stem": "delta",
                "path": "in/delta.png",
                "status": "failed",
                "message": "boom & bust",
                "best_f1": None,
                "mean_f1": None,
            },
        ],
    }


def expected_cells(report: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """``(variant id, scorer, metric) -> text`` for every score and position cell the table must have."""
    out: dict[tuple[str, str, str], str] = {}
    for v in report["variants"]:
        for scorer in report["scorers"]:
            sc = v["scores"].get(scorer, {})
            metrics = ["cosine"] if scorer == "clip" else ["f1"] if scorer == "structure" else TAGGER_METRICS
            for m in metrics:
                value = sc.get(m)
                out[(v["id"], scorer, m)] = "–" if value is None else f"{value:.3f}"
                pos = sc.get("position")
                pvalue = pos.get(m) if isinstance(pos, dict) else pos
                out[(v["id"], scorer, f"position.{m}")] = "–" if pvalue is None else f"{pvalue:.3f}"
    return out


class _Cells(HTMLParser):
    """Collects the text of every ``td[data-scorer][data-metric]`` and the ids of ``tr[data-variant-id]`` rows."""

    def __init__(self) -> None:
        super().__init__()
        self.row: str | None = None
        self.rows: list[str] = []
        self.cell: tuple[str, str, str] | None = None
        self.cells: dict[tuple[str, str, str], str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-variant-id" in a:
            self.row = a["data-variant-id"] or ""
            self.rows.append(self.row)
        if tag == "td" and self.row is not None and "data-scorer" in a and "data-metric" in a:
            self.cell = (self.row, a["data-scorer"] or "", a["data-metric"] or "")
            self.text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.cell is not None:
            self.cells[self.cell] = "".join(self.text).strip()
            self.cell = None
        if tag == "tr":
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.text.append(data)


class _Text(HTMLParser):
    """All text content (entities decoded) and every attribute value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.data: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs.extend(v or "" for _k, v in attrs)

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def _text_of(page_html: str) -> str:
    p = _Text()
    p.feed(page_html)
    return "\n".join(p.data)


_NETWORK = re.compile(
    r"""(?:\b(?:src|href|action|poster|srcset)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["']?)(?:https?:)?//""", re.I
)


# --- pure Python -----------------------------------------------------------------------------------------------------


@pytest.fixture
def report_dir(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    folder = tmp_path / "alpha"
    return make_report(folder), folder


def test_every_variant_and_score_is_in_the_table(report_dir):
    report, folder = report_dir
    page = render_report_html(report, folder)
    parsed = _Cells()
    parsed.feed(page)
    assert parsed.rows == VARIANT_IDS
    expected = expected_cells(report)
    assert parsed.cells == expected
    # every non-null number of the report appears with 3 decimals
    numbers = [t for (vid, _s, _m), t in expected.items() if vid != ERROR_ID and t != "–"]
    assert len(numbers) == 2 * (2 * 16 - 3) + 2 * 2  # tagger+judge, minus the null group agreements; clip
    assert all(re.fullmatch(r"\d\.\d{3}", t) and f">{t}</td>" in page for t in numbers)
    assert all(parsed.cells[(ERROR_ID, s, "f1")] == "–" for s in ("tagger", "judge"))
    assert "generation failed: out of memory &lt;GPU&gt; &amp; more" in page
    # the source path is the title
    assert "<title>tagloop report: in/a&amp;b &lt;src&gt;.png</title>" in page


def test_sections_calibration_summary_best_timings(report_dir):
    report, folder = report_dir
    page = render_report_html(report, folder)
    text = _text_of(page)
    assert 'id="rounds-chart"' in page
    chart = re.search(r'<svg id="rounds-chart".*?</svg>', page, re.S).group(0)
    assert chart.count("<polyline") == 2  # tagger and judge; clip is not a tagger scorer
    assert chart.count("<circle") == 4
    assert "mean F1" in chart and ">round<" in chart
    assert "random weights: <demo> & nothing real" in text
    assert "no floor folder" in text
    assert "0.900" in page and "0.100" in page  # tagger ceiling and floor means
    assert "highest tagger F1 (0.700) & fewest <missing> tags" in text
    for change in report["rounds"][1]["changes"]:
        assert change["why"] in text
        assert change["tag"] in text
    assert "masterpiece, (hair ribbon \\(blue\\):1.2), <3" in text
    assert "lowres, (worst quality:1.2), black & white" in text
    assert "4.760 s" in text
    # missing and spurious tags, each with its scores, in their own classes
    assert re.search(
        r'<li class="missing" data-tag="hair_ribbon_\(blue\)">hair_ribbon_\(blue\) <span class="sc">source 0\.912', page
    )
    assert '<li class="missing" data-tag="&lt;3">&lt;3 ' in page
    assert '<li class="spurious" data-tag="black_&amp;_white">black_&amp;_white ' in page
    assert "kaomoji_\\(o_o)" in text
    assert "blue_hair" in text and "black_hair" in text  # groups


def test_special_characters_are_escaped(report_dir):
    report, folder = report_dir
    report = copy.deepcopy(report)
    report["note"] = "<script>alert('x')</script>"
    page = render_report_html(report, folder)
    assert "<3" not in page
    assert "&lt;3" in page
    assert "<script>alert" not in page
    assert "<src>" not in page and "<GPU>" not in page and "<missing>" not in page
    assert re.search(r"&(?![a-zA-Z]+;|#\d+;|#x[0-9a-fA-F]+;)", re.sub(r"<script>.*?</script>", "", page, flags=re.S)) is None
    assert "<3" in _text_of(page)  # and the text reads back as written


def test_no_network_references(report_dir):
    report, folder = report_dir
    page = render_report_html(report, folder)
    assert not _NETWORK.search(page)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script src" not in page
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert srcs and all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for s in srcs)
    index_page = render_index_html(make_index())
    assert not _NETWORK.search(index_page)
    assert "http://" not in index_page and "https://" not in index_page


def test_thumbnails_are_embedded_and_small(report_dir):
    import base64

    report, folder = report_dir
    page = render_report_html(report, folder)
    srcs = re.findall(r'<img[^>]*\ssrc="data:image/jpeg;base64,([^"]*)"', page)
    assert len(set(srcs)) == 3  # source, two variants (the failed one has no file)
    for s in set(srcs):
        with Image.open(io.BytesIO(base64.b64decode(s))) as im:
            assert max(im.size) <= 256
            assert im.size in {(256, 160), (171, 256), (240, 240)}


def test_no_tags_report_renders_its_message(tmp_path):
    report = {
        "schema_version": 1,
        "kind": "tagloop-reproduce-report",
        "tagloop_version": "0.0.test",
        "created": "2024-01-01T00:00:00Z",
        "note": None,
        "status": "no_tags",
        "message": "the source gave no tags above the threshold (0.35) & nothing was generated",
        "source": {"path": "blank.png", "file": "source.png", "width": 8, "height": 8, "sha256": None},
        "scorers": ["tagger"],
        "rounds": [],
        "variants": [],
        "best": None,
        "summary": {},
        "calibration": {},
        "timings": {"tag": 0.1, "total": 0.1},
    }
    page = render_report_html(report, tmp_path)
    assert (
        '<p class="message" id="message">the source gave no tags above the threshold (0.35) &amp; nothing was generated</p>'
        in page
    )
    assert 'class="status status-no_tags"' in page
    assert "No variants were generated." in page
    assert "rounds-chart" not in page
    assert "image not found: source.png" in page
    # a bare-bones failed report (most sections absent) renders too
    failed = render_report_html({"status": "failed", "message": "tagger crashed <oops>", "source": {"path": "x.png"}}, tmp_path)
    assert "tagger crashed &lt;oops&gt;" in failed and "message failed" in failed


def test_missing_and_broken_images_become_placeholders(tmp_path):
    folder = tmp_path / "run"
    report = make_report(folder, write_images=False)
    (folder / "variants").mkdir(parents=True)
    (folder / "variants" / f"{VARIANT_IDS[0]}.png").write_bytes(b"not a png at all")
    page = render_report_html(report, folder)
    assert "<img" not in page
    assert "image not found: source.png" in page
    assert f"image could not be read: variants/{VARIANT_IDS[0]}.png" in page
    assert f"image not found: variants/{VARIANT_IDS[2]}.png" in page
    assert "no image file" in page  # the failed variant
    # the variant's own `file` is used when images[id] has none
    report2 = make_report(tmp_path / "run2")
    full = render_report_html(report2, tmp_path / "run2").count("<img")
    report2["images"][VARIANT_IDS[0]]["file"] = None
    assert render_report_html(report2, tmp_path / "run2").count("<img") == full


def test_single_round_is_a_single_point(report_dir):
    report, folder = report_dir
    report = copy.deepcopy(report)
    report["rounds"] = report["rounds"][:1]
    chart = re.search(r'<svg id="rounds-chart".*?</svg>', render_report_html(report, folder), re.S).group(0)
    assert "<polyline" not in chart
    assert chart.count("<circle") == 2


def test_index_rows_and_links():
    page = render_index_html(make_index())
    assert re.findall(r'<tr data-stem="([^"]*)"', page) == ["alpha", "b&amp;c &lt;2&gt;", "gamma", "delta"]
    assert 'href="alpha/report.html"' in page
    assert 'href="b%26c%20%3C2%3E/report.html"' in page
    assert "the source gave no tags &lt;none&gt;" in page and "boom &amp; bust" in page
    assert "<2>" not in page
    assert 'data-metric="best_f1" data-value="0.8">0.800</td>' in page
    assert 'data-metric="best_f1" data-value="">–</td>' in page


# --- a real headless browser ---------------------------------------------------------------------------------------


def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; its own browser download is not needed)"
    if shutil.which("chromium") is None:
        return "chromium is not on PATH (Debian: apt-get install chromium)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("TAGLOOP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"TAGLOOP_REQUIRE_BROWSER=1 but the browser test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the whole module."""
    reason = _browser_missing()
    if reason:
        _skip_or_fail(reason)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGS, timeout=60_000)
        except PlaywrightError as e:
            _skip_or_fail(f"chromium did not start: {e}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors, page errors and every request."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    pg.errors = []  # type: ignore[attr-defined]
    pg.requests = []  # type: ignore[attr-defined]
    pg.on("console", lambda msg: pg.errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: pg.errors.append(f"pageerror: {exc}"))
    pg.on("request", lambda req: pg.requests.append(req.url))
    yield pg
    context.close()


def _row_order(pg, table: str, attr: str) -> list[str]:
    return pg.eval_on_selector_all(f"#{table} tbody tr", f"rows => rows.map(r => r.getAttribute('{attr}'))")


def test_report_in_browser(page, tmp_path):
    folder = tmp_path / "alpha"
    report = make_report(folder)
    out = folder / "report.html"
    out.write_text(render_report_html(report, folder), encoding="utf-8")
    page.goto(out.as_uri())
    page.wait_for_load_state("load")

    assert page.title() == "tagloop report: in/a&b <src>.png"
    assert _row_order(page, "variants", "data-variant-id") == VARIANT_IDS
    cells = page.eval_on_selector_all(
        "#variants tbody td[data-scorer][data-metric]",
        "tds => tds.map(td => [td.closest('tr').dataset.variantId, td.dataset.scorer, td.dataset.metric, td.innerText.trim()])",
    )
    assert {(v, s, m): t for v, s, m, t in cells} == expected_cells(report)
    assert "<3" in page.inner_text("#variant-details")
    assert page.locator("li.missing").count() == 8 and page.locator("li.spurious").count() == 8
    assert page.eval_on_selector("li.missing", "e => getComputedStyle(e).color") != page.eval_on_selector(
        "li.spurious", "e => getComputedStyle(e).color"
    )
    assert page.locator("#rounds-chart circle").count() == 4
    assert page.eval_on_selector("#rounds-chart", "e => e.getBoundingClientRect().width") > 100

    # sorting: tagger F1 high to low (null last), then low to high (null still last), then by text
    page.click('th[data-sort-key="tagger.f1"]')
    assert _row_order(page, "variants", "data-variant-id") == [VARIANT_IDS[2], VARIANT_IDS[0], ERROR_ID]
    assert page.get_attribute('th[data-sort-key="tagger.f1"]', "aria-sort") == "descending"
    page.click('th[data-sort-key="tagger.f1"]')
    assert _row_order(page, "variants", "data-variant-id") == [VARIANT_IDS[0], VARIANT_IDS[2], ERROR_ID]
    page.click('th[data-sort-key="seed"]')  # numeric: 12 first, then the two 11s in their current order
    assert _row_order(page, "variants", "data-variant-id") == [ERROR_ID, VARIANT_IDS[0], VARIANT_IDS[2]]
    page.click('th[data-sort-key="id"]')
    assert _row_order(page, "variants", "data-variant-id") == VARIANT_IDS

    # the thumbnails decoded, the page is not blank, nothing was fetched from anywhere
    widths = page.evaluate("() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(widths) >= 5 and all(done and w > 0 for done, w in widths), widths
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    assert shot.width >= 1000 and shot.height >= 1000
    assert len(shot.getcolors(maxcolors=1 << 22) or range(1 << 22)) > 500
    assert max(ImageStat.Stat(shot).stddev) > 20
    assert page.errors == []
    assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests


def test_index_in_browser(page, tmp_path):
    index = make_index()
    (tmp_path / "index.json").write_text(json.dumps(index), encoding="utf-8")
    out = tmp_path / "index.html"
    out.write_text(render_index_html(index), encoding="utf-8")
    report = make_report(tmp_path / "gamma")
    (tmp_path / "gamma" / "report.html").write_text(render_report_html(report, tmp_path / "gamma"), encoding="utf-8")
    page.goto(out.as_uri())

    stems = ["alpha", "b&c <2>", "gamma", "delta"]
    assert _row_order(page, "sources", "data-stem") == stems
    assert page.inner_text('tr[data-stem="b&c <2>"] td:nth-child(4)') == "the source gave no tags <none>"
    page.click('th[data-sort-key="best_f1"]')
    assert _row_order(page, "sources", "data-stem") == ["gamma", "alpha", "b&c <2>", "delta"]
    page.click('th[data-sort-key="best_f1"]')
    assert _row_order(page, "sources", "data-stem") == ["alpha", "gamma", "b&c <2>", "delta"]
    page.click('th[data-sort-key="status"]')
    assert _row_order(page, "sources", "data-stem") == ["delta", "b&c <2>", "alpha", "gamma"]
    assert page.errors == []

    # the link opens the source's report.html
    page.click('tr[data-stem="gamma"] a')
    page.wait_for_load_state("load")
    assert page.url == (tmp_path / "gamma" / "report.html").as_uri()
    assert page.locator("tr[data-variant-id]").count() == 3
    assert page.errors == []


def test_a_real_run_in_browser(page, loop_models, tmp_path):
    """`tagloop reproduce` on the tiny models, then its report.html and index.html in Chromium."""
    from click.testing import CliRunner

    from tagloop.cli import main
    from tagloop.pipeline.demo import draw_source_image

    dd, sd = loop_models
    (tmp_path / "in").mkdir()
    draw_source_image(seed=4).save(tmp_path / "in" / "girl.png")
    out = tmp_path / "out"
    args = ["reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(out)]
    args += ["--variants", "3", "--refine", "1", "--seed", "3", "--steps", "3", "--size", "64x64", "--tokenizer", "estimate"]
    r = CliRunner().invoke(main, [*args, "--device", "cpu", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "girl" / "report.json").read_text(encoding="utf-8"))

    page.goto((out / "girl" / "report.html").as_uri())
    page.wait_for_load_state("load")
    assert _row_order(page, "variants", "data-variant-id") == [v["id"] for v in report["variants"]]
    cells = page.eval_on_selector_all(
        "#variants tbody td[data-scorer][data-metric]",
        "tds => tds.map(td => [td.closest('tr').dataset.variantId, td.dataset.scorer, td.dataset.metric, td.innerText.trim()])",
    )
    assert {(v, s, m): t for v, s, m, t in cells} == expected_cells(report)
    missing = sum(len(v["scores"]["tagger"]["missing"]) for v in report["variants"])
    assert page.locator("li.missing").count() >= min(1, missing)
    assert page.locator("#rounds-chart circle").count() == len(report["rounds"])
    widths = page.evaluate("() => Array.from(document.images).map(i => i.naturalWidth)")
    assert len(widths) >= 1 + len(report["variants"]) and all(w > 0 for w in widths)
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    assert len(shot.getcolors(maxcolors=1 << 22) or range(1 << 22)) > 500 and max(ImageStat.Stat(shot).stddev) > 20
    assert page.errors == []

    page.goto((out / "index.html").as_uri())
    assert _row_order(page, "sources", "data-stem") == ["girl"]
    assert f"{report['best']['f1']:.3f}" in page.inner_text('tr[data-stem="girl"]')
    assert page.errors == []
    assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
