"""The web page at ``/`` of `tagloop serve`: its files, then a real headless Chromium clicking through it.

A tiny DeepDanbooru and a tiny SD1 folder (``loop_models``) serve the page on loopback. The browser tests skip
when Chromium or Playwright is missing, unless ``TAGLOOP_REQUIRE_BROWSER=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

from PIL import Image, ImageStat  # noqa: E402

# the one headless Chromium of the module, with its skip-or-fail logic (TAGLOOP_REQUIRE_BROWSER)
from test_report_html import browser  # noqa: E402, F401

from tagloop.pipeline.demo import draw_source_image  # noqa: E402
from tagloop.server.run import serve_in_thread  # noqa: E402
from tagloop.server.settings import ServerSettings  # noqa: E402

STATIC = Path(__file__).resolve().parents[1] / "tagloop" / "server" / "static"
VIEWPORT = {"width": 1280, "height": 900}
#: one variant job on 2 slow cores: generation, re-tagging and the ceiling copies
JOB_TIMEOUT_MS = 120_000
NOT_AN_IMAGE = b"this is a text file, not a picture"


@pytest.fixture(scope="module")
def server(loop_models, tmp_path_factory):
    dd, sd = loop_models
    jobs = tmp_path_factory.mktemp("page_jobs")
    with serve_in_thread(ServerSettings(tagger=str(dd), model=str(sd), device="cpu", jobs_dir=str(jobs))) as srv:
        yield srv


@pytest.fixture(scope="module")
def source_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page_src") / "girl.png"
    draw_source_image(128).save(path)
    return path


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


@dataclass
class Recorder:
    """What the page said: console messages (type, text), uncaught errors, and every URL it asked for."""

    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def problems(self, allow: str | None = None) -> list[str]:
        """Page errors, and console errors/warnings not matching the ``allow`` pattern."""
        bad = [f"pageerror: {e}" for e in self.page_errors]
        for kind, text in self.console:
            if kind in ("error", "warning") and not (allow and re.search(allow, text)):
                bad.append(f"console {kind}: {text}")
        return bad


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    rec = Recorder()
    pg.on("console", lambda msg: rec.console.append((msg.type, msg.text)))
    pg.on("pageerror", lambda exc: rec.page_errors.append(str(exc)))
    pg.on("request", lambda req: rec.requests.append(req.url))
    pg.rec = rec  # type: ignore[attr-defined]
    yield pg
    context.close()


def wait_for_tags_and_prompt(page) -> None:
    page.wait_for_selector("#tags tbody tr[data-tag]")
    page.wait_for_function("() => document.getElementById('positive').value.length > 0")


# --- the files ------------------------------------------------------------------------------------------------------


def test_page_files_are_served_and_self_contained(server):
    from tagloop.prompt.presets import builtin_presets

    r = requests.get(server.url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for ref in ('src="/static/app.js"', 'href="/static/style.css"'):
        assert ref in html
    for id_ in ("file", "drop", "preview", "tags", "band", "edge-density", "rating", "positive", "negative", "preset"):
        assert f'id="{id_}"' in html, id_
    for id_ in ("generate", "variants", "steps", "width", "height", "seed", "error", "progress", "gallery"):
        assert f'id="{id_}"' in html, id_
    # every input has a label
    for input_id in re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html):
        if input_id.startswith("threshold-"):  # radios inside their own <label>
            assert re.search(rf'<label><input[^>]*id="{input_id}"', html), input_id
        else:
            assert f'for="{input_id}"' in html, input_id
    # the preset select offers exactly the built-in presets
    assert re.findall(r'<option value="([^"]+)"', html) == list(builtin_presets())

    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        r = requests.get(f"{server.url}/static/{name}", timeout=30)
        assert r.status_code == 200 and ctype in r.headers["content-type"]
        assert r.text == (STATIC / name).read_text(encoding="utf-8")
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), path.name
        if path.suffix == ".css":  # no fonts or pictures pulled in by the style either
            assert "@import" not in text and "url(" not in text
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


# --- the browser ----------------------------------------------------------------------------------------------------


def test_tag_prompt_generate_in_browser(page, server, source_png):
    """Drop -> tags -> prompt (edited) -> two variants with scores, and the edited prompt reached the generator."""
    page.goto(server.url + "/")
    page.set_input_files("#file", str(source_png))
    wait_for_tags_and_prompt(page)

    # the tags, the band and edge density are the API's own numbers
    source_url = data_url(source_png.read_bytes(), "image/png")
    tags = requests.post(server.url + "/tagloop/v1/tag", json={"image": source_url, "threshold": "auto"}, timeout=60).json()
    assert tags["tags"] and tags["threshold_mode"] == "adaptive"
    rows = page.eval_on_selector_all(
        "#tags tbody tr[data-tag]", "rs => rs.map(r => [r.dataset.tag, r.querySelector('.num').textContent])"
    )
    assert rows == [[t["name"], f"{t['score']:.3f}"] for t in tags["tags"]]
    bars = page.eval_on_selector_all("#tags .fill", "fs => fs.map(f => f.getBoundingClientRect().width)")
    assert bars[0] > 0 and bars == sorted(bars, reverse=True)
    assert page.inner_text("#edge-density") == f"{tags['edge_density']:.4f}"
    band = page.inner_text("#band")
    assert tags["complexity"] in band and f"{tags['band_threshold']:.3f}" in band
    top_rating = max(tags["rating"], key=tags["rating"].get)
    assert page.inner_text("#rating strong").startswith(top_rating)
    assert page.eval_on_selector("#preview", "i => i.complete && i.naturalWidth") == 128

    # the prompt is the API's, then edited
    composed = requests.post(server.url + "/tagloop/v1/prompt", json={"tags": tags, "preset": "default"}, timeout=60).json()
    assert page.input_value("#positive") == composed["positive"]
    assert page.input_value("#negative") == composed["negative"]
    edited = "edited by the page test, " + composed["positive"]
    page.fill("#positive", edited)
    for id_, value in (("variants", 2), ("steps", 2), ("width", 64), ("height", 64), ("seed", 5)):
        page.fill(f"#{id_}", str(value))
    page.click("#generate")
    page.wait_for_function(
        """() => {
            const imgs = [...document.querySelectorAll('#gallery figure img')];
            return document.querySelectorAll('#gallery figure.variant').length === 2
                && imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""",
        timeout=JOB_TIMEOUT_MS,
    )
    assert page.is_hidden("#error")
    assert page.inner_text("#job-status") == "Done"
    assert page.eval_on_selector("#progress", "p => p.value") == 1

    # the job got the edited prompt and the settings, and the page shows its scores
    job_id = page.get_attribute("#job", "data-job-id")
    job = requests.get(f"{server.url}/tagloop/v1/jobs/{job_id}", timeout=30).json()
    assert job["status"] == "done"
    report = job["result"]
    assert report["prompt"]["positive"] == edited and report["rounds"][0]["positive"] == edited
    assert report["prompt"]["negative"] == composed["negative"]
    gen = report["settings"]["generate"]
    assert (gen["steps"], gen["width"], gen["height"]) == (2, 64, 64)
    variants = report["variants"]
    assert [v["seed"] for v in variants] == [5, 6]
    first = requests.get(f"{server.url}/tagloop/v1/jobs/{job_id}/{variants[0]['file']}", timeout=30)
    with Image.open(io.BytesIO(first.content)) as im:
        assert im.size == (64, 64)
        assert im.info["parameters"].startswith(edited)

    cards = page.eval_on_selector_all("#gallery figure.variant", "cs => cs.map(c => c.dataset.variantId)")
    assert cards == [v["id"] for v in variants]
    for v in variants:
        card = f'#gallery figure[data-variant-id="{v["id"]}"]'
        for metric in ("f1", "recall", "precision"):
            cell = page.inner_text(f'{card} tr[data-scorer="tagger"] td[data-metric="{metric}"]')
            assert cell == f"{v['scores']['tagger'][metric]:.3f}", (v["id"], metric)
        src = page.get_attribute(f"{card} img", "src")
        assert src == f"/tagloop/v1/jobs/{job_id}/{v['file']}"
    best = report["best"]
    assert page.locator(f'#gallery figure.is-best[data-variant-id="{best["id"]}"] .badge').count() == 1
    assert best["why"] in page.inner_text("#best") and f"{best['f1']:.3f}" in page.inner_text("#best")
    assert page.get_attribute("#report-link", "href") == job["report_html"]
    assert requests.get(server.url + job["report_html"], timeout=30).status_code == 200

    # the two columns sit side by side, nothing went wrong, nothing came from outside the server
    left, right = (page.locator("main > section").nth(i).bounding_box() for i in (0, 1))
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 2
    assert page.rec.problems() == []
    assert all(u.startswith((server.url, "data:")) for u in page.rec.requests), page.rec.requests

    page.locator("#results").scroll_into_view_if_needed()
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert shot.size == (VIEWPORT["width"], VIEWPORT["height"])
    assert len(shot.getcolors(maxcolors=1 << 20) or range(1 << 20)) > 200
    assert max(ImageStat.Stat(shot).stddev) > 10


def test_non_image_drop_shows_the_api_error(page, server):
    """A text file dropped on the zone: the API's `detail` in #error, no uncaught error, nothing to generate."""
    page.goto(server.url + "/")
    dt = page.evaluate_handle(
        "bytes => { const dt = new DataTransfer();"
        " dt.items.add(new File([bytes], 'notes.txt', {type: 'text/plain'})); return dt; }",
        NOT_AN_IMAGE.decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
    page.wait_for_selector("#error:not([hidden])")

    answer = requests.post(
        server.url + "/tagloop/v1/tag", json={"image": data_url(NOT_AN_IMAGE, "text/plain"), "threshold": "auto"}, timeout=30
    )
    assert answer.status_code == 422
    assert page.inner_text("#error") == answer.json()["detail"]
    assert page.inner_text("#file-name") == "notes.txt"
    assert page.is_hidden("#preview") and page.is_hidden("#tags")
    assert page.is_disabled("#generate")
    # the browser itself logs the 422 response; anything else is a problem
    assert page.rec.problems(allow=r"status of 422") == []


def test_threshold_control_and_a_refused_job(page, server, source_png):
    """A fixed threshold re-tags; a job over the server's limits is refused with its `detail` shown."""
    page.goto(server.url + "/")
    page.set_input_files("#file", str(source_png))
    wait_for_tags_and_prompt(page)
    auto_rows = page.locator("#tags tbody tr[data-tag]").count()

    page.check("#threshold-fixed")
    page.fill("#threshold", "0.6")
    page.dispatch_event("#threshold", "change")
    page.wait_for_function("() => document.getElementById('band').textContent.includes('0.600')")
    scores = [float(s) for s in page.eval_on_selector_all("#tags .num", "ns => ns.map(n => n.textContent)")]
    assert scores and min(scores) >= 0.6 and len(scores) < auto_rows
    assert "fixed" in page.inner_text("#band")
    page.wait_for_function("() => !document.getElementById('generate').disabled")

    page.fill("#width", "4096")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "`width` 4096 is over the server's `max_size` limit" in page.inner_text("#error")
    page.wait_for_function("() => !document.getElementById('generate').disabled")
    assert page.is_hidden("#results")
    assert page.rec.problems(allow=r"status of 422") == []


def test_a_running_job_is_cancelled_from_the_page(page, server, source_png):
    """Cancel while sampling: the job stops on the server and the page says so, with no page error."""
    page.goto(server.url + "/")
    page.set_input_files("#file", str(source_png))
    wait_for_tags_and_prompt(page)
    for id_, value in (("variants", 8), ("steps", 100), ("width", 64), ("height", 64), ("seed", 1)):
        page.fill(f"#{id_}", str(value))
    page.click("#generate")
    page.wait_for_function("() => /step [1-9]/.test(document.getElementById('job-status').textContent)", timeout=60_000)
    job_id = page.eval_on_selector("#job", "j => j.dataset.jobId")
    page.click("#cancel")
    page.wait_for_function("() => document.getElementById('job-status').textContent === 'Cancelled'", timeout=30_000)
    job = requests.get(server.url + f"/tagloop/v1/jobs/{job_id}", timeout=30).json()
    assert job["status"] == "cancelled" and job["result"] is None
    assert "cancelled" in page.inner_text("#error")
    page.wait_for_function("() => !document.getElementById('generate').disabled")
    assert page.rec.problems() == []
