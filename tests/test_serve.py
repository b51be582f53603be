"""`tagloop serve` through real HTTP on loopback: tagloop's routes, the queue, limits, auth, SIGTERM.

A1111's own routes (and webuiapi as a client) are in tests/test_serve_a1111.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

from PIL import Image  # noqa: E402

from tagloop.pipeline.demo import draw_source_image  # noqa: E402
from tagloop.server.run import serve_in_thread  # noqa: E402
from tagloop.server.settings import ServerLimits, ServerSettings  # noqa: E402
from tagloop.server.worker import Job  # noqa: E402


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def source_b64():
    return png_b64(draw_source_image(128))


@pytest.fixture(scope="module")
def srv(loop_models):
    dd, sd = loop_models
    with serve_in_thread(ServerSettings(tagger=str(dd), model=str(sd), device="cpu")) as handle:
        yield handle


def hold_worker(state):
    """Queue a job that blocks the worker until the returned event is set (so requests pile up)."""
    release = threading.Event()
    started = threading.Event()

    def block(job):
        started.set()
        release.wait(30)

    state.worker.submit(Job("block", block))
    assert started.wait(10)
    return release


# -- /tagloop/v1/tag --------------------------------------------------------------------------------


def test_tag_route_answers_as_the_tag_command_writes(srv, loop_models, source_b64):
    import tagloop

    r = requests.post(srv.url + "/tagloop/v1/tag", json={"image": source_b64})
    assert r.status_code == 200, r.text
    got = r.json()
    # the same image through the Python API, with the same (adaptive) threshold
    want = tagloop.tag(draw_source_image(128), loop_models[0], device="cpu", workers=1).to_json()
    assert got["threshold_mode"] == "adaptive" and got["complexity"] and got["band_threshold"] is not None
    assert abs(got["edge_density"] - want["edge_density"]) < 1e-6
    assert [t["name"] for t in got["tags"]] == [t["name"] for t in want["tags"]]
    assert np.allclose([t["score"] for t in got["tags"]], [t["score"] for t in want["tags"]], atol=1e-5)
    fixed = requests.post(srv.url + "/tagloop/v1/tag", json={"image": source_b64, "threshold": 0.8}).json()
    assert fixed["threshold_mode"] == "fixed" and all(t["score"] >= 0.8 for t in fixed["tags"])
    assert len(fixed["tags"]) < len(got["tags"])


def test_tag_route_several_images_json_and_multipart(srv, source_b64):
    other = png_b64(Image.new("RGB", (96, 80), (250, 250, 250)))
    r = requests.post(srv.url + "/tagloop/v1/tag", json={"images": [source_b64, other], "names": ["a.png", "b.png"]})
    assert r.status_code == 200, r.text
    assert [x["path"] for x in r.json()] == ["a.png", "b.png"]
    files = [
        ("images", ("a.png", base64.b64decode(source_b64), "image/png")),
        ("images", ("b.png", base64.b64decode(other), "image/png")),
    ]
    m = requests.post(srv.url + "/tagloop/v1/tag", files=files, data={"threshold": "0.5"})
    assert m.status_code == 200, m.text
    assert [x["path"] for x in m.json()] == ["a.png", "b.png"]
    assert all(t["score"] >= 0.5 for x in m.json() for t in x["tags"])


@pytest.mark.parametrize(
    "image, status, words",
    [
        ("not base64 at all!!", 422, "base64"),
        (base64.b64encode(b"hello, I am a text file").decode(), 422, "cannot be used"),
        ("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode(), 422, "cannot be used"),
        ("", 404, "Image not found"),
        ("https://example.com/a.png", 422, "URL"),
    ],
)
def test_bad_images_are_4xx_with_one_sentence(srv, image, status, words):
    r = requests.post(srv.url + "/tagloop/v1/tag", json={"image": image})
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["detail"] and body["error"]
    # the worker is not stuck: the next request is answered
    assert requests.get(srv.url + "/tagloop/v1/status").json()["queue"]["running"] == []


def test_decompression_bomb_and_body_cap(loop_models, source_b64):
    dd, _ = loop_models
    limits = ServerLimits(max_pixels=100 * 100, max_body_bytes=200_000)
    with serve_in_thread(ServerSettings(tagger=str(dd), device="cpu", limits=limits)) as s:
        r = requests.post(s.url + "/tagloop/v1/tag", json={"image": source_b64})  # 128x128 > 100x100
        assert r.status_code == 413 and "max_pixels" in r.json()["detail"]
        huge = "A" * 300_000
        r = requests.post(s.url + "/tagloop/v1/tag", json={"image": huge})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
        # a chunked body without a length is cut off at the cap too
        r = requests.post(
            s.url + "/tagloop/v1/tag",
            data=iter([b'{"image": "', b"A" * 150_000, b"A" * 150_000, b'"}']),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413
        small = png_b64(Image.new("RGB", (64, 64), (10, 200, 30)))
        assert requests.post(s.url + "/tagloop/v1/tag", json={"image": small}).status_code == 200


def test_too_many_images_and_bad_json(srv, source_b64):
    r = requests.post(srv.url + "/tagloop/v1/tag", json={"images": [source_b64] * 65})
    assert r.status_code == 413 and "max_images" in r.json()["detail"]
    r = requests.post(srv.url + "/tagloop/v1/tag", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = requests.post(srv.url + "/tagloop/v1/tag", json={"image": source_b64, "threshold": 7})
    assert r.status_code == 422 and "threshold" in r.json()["detail"]


# -- the queue --------------------------------------------------------------------------------------


def test_tag_requests_waiting_together_share_one_forward_pass(srv, source_b64):
    state = srv.state
    before = dict(state.worker.stats)
    release = hold_worker(state)
    thresholds = [0.3, 0.5, 0.7, None, 0.4, 0.6]
    with ThreadPoolExecutor(len(thresholds)) as pool:
        futures = [
            pool.submit(
                requests.post,
                srv.url + "/tagloop/v1/tag",
                json={"image": source_b64} if t is None else {"image": source_b64, "threshold": t},
            )
            for t in thresholds
        ]
        deadline = time.time() + 20
        while state.worker.snapshot()["queued"] < len(thresholds) and time.time() < deadline:
            time.sleep(0.02)
        release.set()
        answers = [f.result() for f in futures]
    after = state.worker.stats
    assert after["batches"] - before["batches"] == 1  # six requests, one forward pass
    assert after["batched_images"] - before["batched_images"] == len(thresholds)
    # each answer is its own request's, thresholded by its own options, equal to tagging alone
    for t, r in zip(thresholds, answers):
        assert r.status_code == 200
        alone = (
            state.taggers["default"].tag(draw_source_image(128), **({} if t is None else {"threshold": t}), workers=1).to_json()
        )
        assert [x["name"] for x in r.json()["tags"]] == [x["name"] for x in alone["tags"]]


def test_full_queue_answers_503_with_retry_after_and_loses_nothing(loop_models, source_b64):
    dd, _ = loop_models
    with serve_in_thread(ServerSettings(tagger=str(dd), device="cpu", queue_size=3)) as s:
        release = hold_worker(s.state)
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(requests.post, s.url + "/tagloop/v1/tag", json={"image": source_b64}) for _ in range(8)]
            deadline = time.time() + 20
            while s.state.worker.stats["rejected"] < 5 and time.time() < deadline:
                time.sleep(0.02)
            release.set()
            answers = [f.result() for f in futures]
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 3 + [503] * 5
        for r in answers:
            if r.status_code == 503:
                assert r.headers["Retry-After"].isdigit() and "queue is full" in r.json()["detail"]
        assert s.state.worker.stats["rejected"] == 5


def test_a_client_that_goes_away_leaves_no_work_behind(srv, source_b64):
    state = srv.state
    release = hold_worker(state)
    host, port = srv.url.removeprefix("http://").split(":")
    body = json.dumps({"image": source_b64}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /tagloop/v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.time() + 10
    while state.worker.snapshot()["queued"] < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert state.worker.snapshot()["queued"] == 1
    cancelled = state.worker.stats["cancelled"]
    sock.close()  # the client disconnects while its job waits
    deadline = time.time() + 10
    while state.worker.snapshot()["queued"] and time.time() < deadline:
        time.sleep(0.05)
    assert state.worker.snapshot()["queued"] == 0
    assert state.worker.stats["cancelled"] == cancelled + 1
    jobs = state.worker.stats["jobs"]
    release.set()
    time.sleep(0.3)
    assert state.worker.stats["jobs"] == jobs  # the dropped job never ran


# -- prompt and reproduce ---------------------------------------------------------------------------


def test_prompt_route_matches_compose_prompt(srv):
    import tagloop

    r = requests.post(
        srv.url + "/tagloop/v1/prompt", json={"tags": "1girl, solo, long_hair, (smile:0.9)", "preset": "sd15-anime"}
    )
    assert r.status_code == 200, r.text
    want = tagloop.compose_prompt("1girl, solo, long_hair, (smile:0.9)", preset="sd15-anime").to_json()
    assert r.json()["positive"] == want["positive"] and r.json()["negative"] == want["negative"]
    bad = requests.post(srv.url + "/tagloop/v1/prompt", json={"tags": "1girl", "preset": "/etc/passwd"})
    assert bad.status_code == 422 and "built-in" in bad.json()["detail"]


def test_reproduce_job_runs_and_serves_its_report(srv, source_b64):
    r = requests.post(
        srv.url + "/tagloop/v1/reproduce",
        json={"image": source_b64, "variants": 2, "steps": 2, "width": 64, "height": 64, "seed": 5, "prompt": "1girl, blush"},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 120
    while True:
        j = requests.get(srv.url + f"/tagloop/v1/jobs/{job_id}").json()
        if j["status"] in ("done", "failed", "cancelled") or time.time() > deadline:
            break
        time.sleep(0.2)
    assert j["status"] == "done", j
    report = j["result"]
    assert report["prompt"]["positive"] == "1girl, blush"
    assert [v["seed"] for v in report["variants"]] == [5, 6]
    html = requests.get(srv.url + j["report_html"])
    assert html.status_code == 200 and "<html" in html.text.lower()
    png = requests.get(srv.url + f"/tagloop/v1/jobs/{job_id}/" + report["variants"][0]["file"])
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)
    assert requests.get(srv.url + f"/tagloop/v1/jobs/{job_id}/../../etc/passwd").status_code == 404
    assert requests.get(srv.url + "/tagloop/v1/jobs/nope").status_code == 404


def test_reproduce_settings_are_checked_before_queueing(srv, source_b64):
    r = requests.post(srv.url + "/tagloop/v1/reproduce", json={"image": source_b64, "variants": 40})
    assert r.status_code == 422 and "max_variants" in r.json()["detail"]
    r = requests.post(srv.url + "/tagloop/v1/reproduce", json={"image": source_b64, "prompt": "x", "refine": 1})
    assert r.status_code == 422 and "refine" in r.json()["detail"]
    r = requests.post(srv.url + "/tagloop/v1/reproduce", json={"image": source_b64, "steps": 1000})
    assert r.status_code == 422 and "max_steps" in r.json()["detail"]


# -- auth, docs, page --------------------------------------------------------------------------------


def test_basic_auth_on_every_route(loop_models, source_b64):
    dd, _ = loop_models
    with serve_in_thread(ServerSettings(tagger=str(dd), device="cpu", api_auth="me:secret,bot:pw")) as s:
        for method, path in (("get", "/"), ("get", "/docs"), ("get", "/sdapi/v1/options"), ("post", "/tagloop/v1/tag")):
            r = getattr(requests, method)(s.url + path, json={"image": source_b64})
            assert r.status_code == 401, path
            assert r.headers["WWW-Authenticate"].startswith("Basic")
        assert requests.get(s.url + "/sdapi/v1/options", auth=("me", "wrong")).status_code == 401
        assert requests.get(s.url + "/sdapi/v1/options", auth=("me", "secret")).status_code == 200
        r = requests.post(s.url + "/tagloop/v1/tag", json={"image": source_b64}, auth=("bot", "pw"))
        assert r.status_code == 200


def test_openapi_docs(srv):
    assert requests.get(srv.url + "/docs").status_code == 200
    paths = requests.get(srv.url + "/openapi.json").json()["paths"]
    for p in (
        "/sdapi/v1/txt2img",
        "/sdapi/v1/interrogate",
        "/tagger/v1/interrogate",
        "/tagloop/v1/tag",
        "/tagloop/v1/jobs/{job_id}",
    ):
        assert p in paths


# -- SIGTERM ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_finishes_the_job_in_flight_and_answers_the_queue_503(loop_models, tmp_path):
    dd, sd = loop_models
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tagloop", "serve", "--tagger", str(dd), "--model", str(sd), "--device", "cpu"]
    proc = subprocess.Popen(cmd + ["--port", str(port), "--log-level", "warning"], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                requests.get(url + "/sdapi/v1/progress", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
                time.sleep(0.2)
        body = {"prompt": "1girl", "steps": 12, "width": 64, "height": 64, "seed": 1}
        requests.post(url + "/sdapi/v1/txt2img", json={**body, "steps": 1}, timeout=120)  # load the model first
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(requests.post, url + "/sdapi/v1/txt2img", json=body, timeout=120)
            while requests.get(url + "/sdapi/v1/progress").json()["state"]["job_count"] < 1:
                time.sleep(0.01)
            queued = [pool.submit(requests.post, url + "/sdapi/v1/txt2img", json=body, timeout=120) for _ in range(3)]
            while requests.get(url + "/sdapi/v1/progress").json()["state"]["job_count"] < 4:
                time.sleep(0.01)
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            answers = [q.result() for q in queued]
            done = first.result()
        assert [a.status_code for a in answers] == [503] * 3
        assert all("stopping" in a.json()["detail"] for a in answers)
        assert done.status_code == 200 and len(done.json()["images"]) == 1
        proc.wait(timeout=20)
        assert time.time() - t0 < 20
        assert proc.returncode in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


# -- the command ------------------------------------------------------------------------------------


def test_serve_command_reads_its_options_and_the_config_table(loop_models, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import tagloop.server.run as run_module
    from tagloop.cli import main

    dd, sd = loop_models
    seen = {}
    monkeypatch.setattr(run_module, "serve", lambda settings, **kw: seen.setdefault("s", settings))
    cfg = tmp_path / "tagloop.toml"
    cfg.write_text(f'[serve]\ntagger = "{dd}"\nqueue_size = 5\nmax_steps = 30\ncaption_threshold = 0.4\n')
    r = CliRunner().invoke(main, ["serve", "--config", str(cfg), "--port", "7999", "--api-auth", "u:p"])
    assert r.exit_code == 0, r.output
    s = seen["s"]
    assert (s.tagger, s.queue_size, s.limits.max_steps, s.port, s.api_auth) == (str(dd), 5, 30, 7999, "u:p")
    assert s.caption["interrogate_deepbooru_score_threshold"] == 0.4 and s.host == "127.0.0.1"
    seen.clear()
    r = CliRunner().invoke(main, ["--config", str(cfg), "serve", "--queue-size", "9"])
    assert r.exit_code == 0 and seen["s"].queue_size == 9 and seen["s"].limits.max_steps == 30
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve]\nqueue_size = 0\n")
    r = CliRunner().invoke(main, ["serve", "--config", str(bad), "--tagger", str(dd)])
    assert r.exit_code == 2 and "queue_size" in r.output
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 2 and "--tagger" in r.output
    r = CliRunner().invoke(main, ["serve", "--tagger", str(dd), "--api-auth", "nocolon"])
    assert r.exit_code == 2 and "api_auth" in r.output


def test_a_client_that_goes_away_stops_its_running_generation(srv):
    state = srv.state
    requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1})  # loaded
    host, port = srv.url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "x", "width": 64, "height": 64, "steps": 150, "seed": 1}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    job = None
    deadline = time.time() + 30
    while time.time() < deadline:
        running = state.worker.snapshot()["running"]
        if running and running[0].step >= 2:
            job = running[0]
            break
        time.sleep(0.01)
    assert job is not None and job.steps == 150
    sock.close()  # the client goes away mid-generation
    deadline = time.time() + 30
    while job.state == "running" and time.time() < deadline:
        time.sleep(0.02)
    assert job.state in ("done", "cancelled") and job.stopping
    assert job.step < 150  # it stopped early instead of sampling all 150 steps for nobody
    assert requests.get(srv.url + "/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_a_reproduce_job_can_be_cancelled(srv, source_b64):
    big = {"image": source_b64, "variants": 8, "steps": 100, "width": 64, "height": 64, "seed": 1}
    first = requests.post(srv.url + "/tagloop/v1/reproduce", json=big).json()["id"]
    second = requests.post(srv.url + "/tagloop/v1/reproduce", json=big).json()["id"]
    deadline = time.time() + 60
    while requests.get(srv.url + f"/tagloop/v1/jobs/{first}").json()["sampling_step"] < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert requests.delete(srv.url + f"/tagloop/v1/jobs/{second}").json()["status"] == "cancelled"  # waiting: never runs
    t0 = time.time()
    requests.delete(srv.url + f"/tagloop/v1/jobs/{first}")
    while requests.get(srv.url + f"/tagloop/v1/jobs/{first}").json()["status"] == "running" and time.time() - t0 < 30:
        time.sleep(0.05)
    j = requests.get(srv.url + f"/tagloop/v1/jobs/{first}").json()
    assert j["status"] == "cancelled" and "cancelled" in j["error"] and j["result"] is None
    assert time.time() - t0 < 10  # it stopped at its next step, not after 8 x 100 steps
    assert requests.get(srv.url + f"/tagloop/v1/jobs/{second}").json()["started"] is None
    assert requests.get(srv.url + "/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_an_image_with_alpha_is_tagged_as_the_tag_command_tags_the_file(srv, tmp_path):
    img = draw_source_image(128).convert("RGBA")
    alpha = Image.new("L", img.size, 0)
    alpha.paste(255, (16, 16, 112, 112))
    img.putalpha(alpha)
    path = tmp_path / "alpha.png"
    img.save(path)
    r = requests.post(srv.url + "/tagloop/v1/tag", json={"image": base64.b64encode(path.read_bytes()).decode(), "threshold": 0.3})
    want = srv.state.taggers["default"].tag(str(path), threshold=0.3, workers=1).to_json()
    got = r.json()
    assert [t["name"] for t in got["tags"]] == [t["name"] for t in want["tags"]]
    assert np.allclose([t["score"] for t in got["tags"]], [t["score"] for t in want["tags"]], atol=1e-6)
    assert abs(got["edge_density"] - want["edge_density"]) < 1e-9
