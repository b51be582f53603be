"""`tagloop serve` under a bounded load, on loopback only: nothing lost, memory flat, batched tagging.

The server runs as its own process (`python -m tagloop serve ... --host 127.0.0.1 --port P`), as a user
runs it; the load comes from this process: ``--clients`` threads, each with its own
``requests.Session``, sending

- ``POST /tagloop/v1/tag`` ``{"images": [b64], "names": ["req-<i>"]}``: the answer's ``[0]["path"]``
  must be ``req-<i>`` and its tags those of the same image asked alone, before the load;
- ``POST /sdapi/v1/interrogate`` ``{"image": b64, "model": "deepdanbooru"}``: the caption must be the
  one the same image got alone (the requests use a few different pictures, so a crossed answer shows);
- ``POST /sdapi/v1/txt2img`` ``{"prompt": "1girl, req <i>", "seed": <unique>, "steps": 2..4, 64x64}``:
  the answer's ``info`` must carry that seed and that prompt, and one 64x64 PNG.

Every request must be answered exactly once: its result, or 503 with ``Retry-After`` (with ``--retry``
the client waits that long and sends it again, up to ``--max-retries``; retries are counted). No answer
may carry another request's id, and no id may come back twice. A retry goes over the kept-alive
connection, as ``requests.Session`` sends it; ``--reconnect`` opens a new one for it instead (uvicorn
closes a connection idle for its ``timeout_keep_alive``, 5 s, the same as the server's Retry-After, so
a client that waits exactly Retry-After can send into a connection the server is closing: that shows
as "no answer ... right after a Retry-After wait").

Scenarios:

1. mixed load (``--requests`` a round, ``--rounds`` rounds in a row, ``--txt2img-share`` of them
   txt2img, the rest tag and interrogate half and half) against a server with ``--tag-batch`` and
   ``--queue-size``; its resident memory (``VmRSS`` from ``/proc/<pid>/status``, every 0.2 s) after
   the warm-up, at each round's peak and end, and its growth from round to round;
2. tag-only load, one image a request (``--tag-requests`` a run): ``--clients`` clients against that
   server (batched), ``--clients`` clients against a second server started with ``--tag-batch 1``
   (each request its own forward pass, as A1111's one lock runs them: the naive way to compare with),
   and one client, one request at a time; the three interleaved ``--tag-repeats`` times, medians
   reported, so that other work on the machine falls on all three alike;
3. mixed load against a fresh server with ``--small-queue`` places in its queue: 503s with Retry-After.

The server's own counters (``GET /tagloop/v1/status`` ``counters``) give the mean forward batch. To say
whether the model or the HTTP + decode overhead dominates, this process then times the tagger alone
(decode, preprocess, forward of 1 and of ``--tag-batch`` images; medians). Each server is stopped with
SIGTERM and must exit by itself; the mixed one with a long txt2img running and three tag requests
waiting, each of which must still be answered (the running one its result, the waiting ones 503).

The tiny demo DeepDanbooru (`tagloop.pipeline.demo.build_models`) has tiny widths but the real 512x512
input, so its forward pass costs a few tens of ms on a CPU, the same order as HTTP, JSON, base64 and
decoding; ``--tagger-kind dd-full`` builds a full-size DeepDanbooru v3 (9,176 tags, random weights,
~640 MB; as bench/reproduce.py ``--full`` does) so the forward pass is real work. Weights are random:
speed, not quality.

    python bench/serve_load.py --requests 60 --tag-requests 60            # quick
    python bench/serve_load.py --retry                                    # 200 requests x 2 rounds, 16 clients
    python bench/serve_load.py --tagger-kind dd-full --requests 48 --tag-requests 96 --work-dir /tmp/tl-serve
    python bench/serve_load.py --device cuda --tagger-kind dd-full --work-dir /tmp/tl-serve
    python bench/serve_load.py --tagger SmilingWolf/wd-swinv2-tagger-v3 --model runwayml/stable-diffusion-v1-5 --device cuda

Prints a table and writes JSON (``--json``, default bench/serve_load.json). The client threads run on
the same machine as the server and compete with it for the CPU.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOOPBACK = ("127.0.0.1", "localhost", "::1")
KINDS = ("tag", "interrogate", "txt2img")
PATHS = {"tag": "/tagloop/v1/tag", "interrogate": "/sdapi/v1/interrogate", "txt2img": "/sdapi/v1/txt2img"}
#: distinct pictures the requests cycle through, so that a crossed answer differs from the right one
N_PICTURES = 4
SEED_BASE = 1_000_000


# --- models and pictures ---------------------------------------------------------------------------


def make_pictures(folder: Path, size: int) -> list[Path]:
    from tagloop.pipeline.demo import draw_source_image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(N_PICTURES):
        p = folder / f"picture-{k}.png"
        draw_source_image(size=size, seed=7 + 11 * k).save(p)
        out.append(p)
    return out


def build(args, work: Path, pictures: list[Path]) -> dict:
    """The tagger and SD model the servers load: the user's, or built here (once, in ``work``)."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    tagger, model = args.tagger, args.model
    if tagger is None or (model is None and args.txt2img_share > 0):
        from tagloop.pipeline.demo import _quiet_loaders, build_models

        _quiet_loaders()
        dd, sd = build_models(work / "models")
        model = model or str(sd)
        if tagger is None and args.tagger_kind == "tiny":
            tagger = str(dd)
    if tagger is None:  # dd-full
        from reproduce import build_full_deepdanbooru  # bench/reproduce.py: ~30 tags above 0.5, as a trained model

        from tagloop.tagger.deepdanbooru import FULL_NUM_TAGS

        path = work / "models-full" / "model-resnet_custom_v3.safetensors"
        if not path.is_file():
            info.update(build_full_deepdanbooru(path, pictures, FULL_NUM_TAGS))
        tagger = str(path)
    info.update(
        {"tagger": tagger, "model": model if args.txt2img_share > 0 else None, "seconds": round(time.perf_counter() - t0, 1)}
    )
    return info


def b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


# --- the server process ----------------------------------------------------------------------------


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_rss(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (``VmRSS``; psutil where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot(pids: list[int]) -> dict | None:
    """CPU seconds so far: the whole machine's busy time, the servers' (``pids``) and this process's."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        servers = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            servers += int(f[11]) + int(f[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    t = os.times()
    return {"machine": (sum(v[:8]) - v[3] - v[4]) / _TICK, "servers": servers / _TICK, "bench": t.user + t.system}


def cpu_use(before: dict | None, after: dict | None, wall: float) -> dict | None:
    """Shares of the machine's CPU time during a load: the servers', this process's (the clients'), others'."""
    if not before or not after or wall <= 0:
        return None
    cap = wall * (os.cpu_count() or 1)
    d = {k: after[k] - before[k] for k in after}
    others = max(0.0, d["machine"] - d["servers"] - d["bench"])
    return {
        "servers_pct": round(100 * d["servers"] / cap, 1),
        "clients_pct": round(100 * d["bench"] / cap, 1),
        "others_pct": round(100 * others / cap, 1),
    }


class RssSampler(threading.Thread):
    """The server's RSS every ``interval`` seconds, as ``(time, bytes)``."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = read_rss(self.pid)
            if rss is not None:
                self.samples.append((time.perf_counter(), rss))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def now(self) -> int | None:
        rss = read_rss(self.pid)
        if rss is not None:
            self.samples.append((time.perf_counter(), rss))
        return rss

    def peak(self, t0: float, t1: float) -> int | None:
        values = [r for t, r in self.samples if t0 <= t <= t1]
        return max(values) if values else None


class Server:
    """``python -m tagloop serve`` on a free loopback port, its log in ``log``; ``stop()`` sends SIGTERM."""

    def __init__(self, args, models: dict, log: Path, *, tag_batch: int, queue_size: int) -> None:
        self.host = args.host
        self.port = free_port(self.host)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        cmd = [sys.executable, "-m", "tagloop", "serve", "--tagger", models["tagger"], "--device", args.device]
        if models.get("model"):
            cmd += ["--model", models["model"]]
        cmd += ["--host", self.host, "--port", str(self.port), "--log-level", "warning"]
        cmd += ["--tag-batch", str(tag_batch), "--queue-size", str(queue_size), "--max-images", "64"]
        self.cmd = cmd
        self.tag_batch, self.queue_size = tag_batch, queue_size
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONUNBUFFERED": "1"}
        self._log_fh = open(log, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log_fh, stderr=subprocess.STDOUT, env=env)
        self.sampler = RssSampler(self.proc.pid)
        self._wait_ready(args.start_timeout)
        self.start_s = round(time.perf_counter() - t0, 2)
        self.sampler.start()

    def _wait_ready(self, timeout: float) -> None:
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}) before it answered:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/sdapi/v1/progress", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise SystemExit(f"the server did not answer /sdapi/v1/progress in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def status(self) -> dict:
        import requests

        return requests.get(self.url + "/tagloop/v1/status", timeout=30).json()

    def stop(self, timeout: float = 60.0, inflight: tuple | None = None) -> dict:
        """SIGTERM; the server must exit by itself within ``timeout`` seconds.

        ``inflight``: ``(reqs, pictures_b64, refs, args)`` sent first and queued before the signal;
        each must still be answered (the running one its result, the waiting ones 503), which a
        server killed outright would not do.
        """
        threads, recs = [], []
        if inflight:
            import requests

            reqs, pictures_b64, refs, args = inflight
            once = argparse.Namespace(**{**vars(args), "retry": False})
            for req in reqs:
                t = threading.Thread(
                    target=lambda r=req: recs.append(send(requests.Session(), self.url, r, pictures_b64, refs, once)), daemon=True
                )
                t.start()
                threads.append(t)
                time.sleep(0.05)  # in this order on the queue
            deadline = time.time() + 30
            while time.time() < deadline:  # every one of them queued or running before the signal
                q = self.status()["queue"]
                if q["waiting"] + len(q["running"]) >= len(reqs) or len(recs) == len(reqs):
                    break
                time.sleep(0.02)
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout)
        self.sampler.stop()
        try:
            rc = self.proc.wait(timeout)
            exited = True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
            exited = False
        self._log_fh.close()
        # uvicorn re-raises the signal once its graceful shutdown is done: rc -15 is that exit
        out: dict[str, Any] = {"exited_on_sigterm": exited, "rc": rc, "exit_s": round(time.perf_counter() - t0, 2)}
        if inflight:
            out["inflight"] = [{"kind": r.kind, "status": r.status, "ok": r.ok, "problem": r.problem} for r in recs]
            out["inflight_answered"] = len(recs) == len(inflight[0]) and all(r.ok for r in recs)
        errors = [ln for ln in self.log_tail(20000).splitlines() if "Traceback" in ln or "ERROR" in ln]
        if errors:
            out["log_errors"] = errors[:5]
        return out


# --- requests --------------------------------------------------------------------------------------


@dataclass
class Req:
    id: int
    kind: str
    picture: int = 0
    steps: int = 0

    @property
    def name(self) -> str:
        return f"req-{self.id}"

    @property
    def seed(self) -> int:
        return SEED_BASE + self.id

    @property
    def prompt(self) -> str:
        return f"1girl, req {self.id}"

    def body(self, pictures_b64: list[str]) -> dict:
        if self.kind == "tag":
            return {"images": [pictures_b64[self.picture]], "names": [self.name]}
        if self.kind == "interrogate":
            return {"image": pictures_b64[self.picture], "model": "deepdanbooru"}
        return {"prompt": self.prompt, "seed": self.seed, "steps": self.steps, "width": 64, "height": 64}


@dataclass
class Rec:
    id: int
    kind: str
    status: int | None = None
    latency_s: float = 0.0  # first send to final answer, retries included
    last_s: float = 0.0  # the last attempt alone
    retries: int = 0
    n503: int = 0
    retry_after: str | None = None
    answer_id: str | None = None
    ok: bool = False
    content_ok: bool | None = None
    problem: str | None = None


class Ids:
    """Request ids unique over the whole run (so seeds and names never repeat between loads)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[int]:
        out = list(range(self.next, self.next + n))
        self.next += n
        return out


def make_requests(ids: list[int], txt2img_share: float, rng: random.Random, tag_only: bool = False) -> list[Req]:
    """``txt2img_share`` of txt2img, the rest tag and interrogate half and half (``tag_only``: all tag)."""
    n = len(ids)
    n_txt = 0 if tag_only else round(n * txt2img_share)
    n_int = 0 if tag_only else (n - n_txt) // 2
    kinds = ["txt2img"] * n_txt + ["interrogate"] * n_int + ["tag"] * (n - n_txt - n_int)
    rng.shuffle(kinds)
    return [Req(i, k, picture=i % N_PICTURES, steps=rng.randint(2, 4) if k == "txt2img" else 0) for i, k in zip(ids, kinds)]


def check_answer(req: Req, data: Any, refs: dict) -> tuple[str | None, bool | None, str | None]:
    """``(answer_id, content_ok, problem)``: the id the answer carries, whether its content matches
    the same picture asked alone, and what is wrong with it (None: nothing)."""
    if req.kind == "tag":
        if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            return None, None, f"tag answer is not a list of one result: {str(data)[:120]}"
        got = data[0].get("path")
        if got != req.name:
            return got, None, f"tag answer for {req.name} carries path {got!r}"
        tags = [t["name"] for t in data[0].get("tags", [])]
        return got, tags == refs["tag"][req.picture], None
    if req.kind == "interrogate":
        caption = data.get("caption") if isinstance(data, dict) else None
        if not isinstance(caption, str):
            return None, None, f"interrogate answer has no caption: {str(data)[:120]}"
        same = caption == refs["interrogate"][req.picture]
        # the pictures' captions differ, so a caption of another picture is a crossed answer
        crossed = not same and caption in refs["interrogate"].values()
        return f"picture-{req.picture}" if same else None, same, "caption of another picture" if crossed else None
    try:
        info = json.loads(data["info"])
    except (KeyError, TypeError, ValueError):
        return None, None, f"txt2img answer has no JSON info: {str(data)[:120]}"
    seed, prompt = info.get("seed"), info.get("prompt")
    if seed != req.seed or prompt != req.prompt:
        return f"seed-{seed}", None, f"txt2img for seed {req.seed} / {req.prompt!r} answered seed {seed} / {prompt!r}"
    images = data.get("images") or []
    if len(images) != 1:
        return f"seed-{seed}", None, f"txt2img answered {len(images)} images, not 1"
    from PIL import Image

    size = Image.open(io.BytesIO(base64.b64decode(images[0]))).size
    return f"seed-{seed}", size == (64, 64), None if size == (64, 64) else f"txt2img image is {size}, not 64x64"


def send(session, url: str, req: Req, pictures_b64: list[str], refs: dict, args) -> Rec:
    import requests

    rec = Rec(req.id, req.kind)
    body = req.body(pictures_b64)
    t0 = time.perf_counter()
    while True:
        t1 = time.perf_counter()
        try:
            r = session.post(url + PATHS[req.kind], json=body, timeout=args.request_timeout)
        except requests.RequestException as e:
            rec.problem = f"no answer: {type(e).__name__}: {e}"[:300]
            if rec.retries and isinstance(e, requests.ConnectionError):
                rec.problem += f" [on a kept-alive connection, right after a {rec.retry_after} s Retry-After wait]"
            rec.latency_s = time.perf_counter() - t0
            return rec
        rec.last_s = time.perf_counter() - t1
        if r.status_code == 503:
            rec.n503 += 1
            rec.retry_after = r.headers.get("Retry-After")
            if rec.retry_after is None:
                rec.status, rec.problem = 503, "503 without Retry-After"
                break
            if args.retry and rec.retries < args.max_retries:
                rec.retries += 1
                time.sleep(float(rec.retry_after))
                if args.reconnect:
                    session.close()  # drop the kept-alive connection; the next send opens a new one
                continue
        break
    rec.latency_s = time.perf_counter() - t0
    rec.status = r.status_code
    if r.status_code == 200:
        try:
            data = r.json()
        except ValueError:
            rec.problem = f"200 with a body that is not JSON: {r.text[:120]}"
            return rec
        rec.answer_id, rec.content_ok, rec.problem = check_answer(req, data, refs)
        rec.ok = rec.problem is None
    elif r.status_code == 503 and rec.problem is None:
        rec.ok = True  # answered: come back later (and told when)
    elif rec.problem is None:
        rec.problem = f"HTTP {r.status_code}: {r.text[:200]}"
    return rec


def run_load(url: str, reqs: list[Req], clients: int, pictures_b64: list[str], refs: dict, args) -> dict:
    """Send ``reqs`` from ``clients`` threads (one Session each); every request once."""
    import requests

    todo: queue.Queue = queue.Queue()
    for r in reqs:
        todo.put(r)
    records: list[Rec] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as s:
            while True:
                try:
                    req = todo.get_nowait()
                except queue.Empty:
                    return
                rec = send(s, url, req, pictures_b64, refs, args)
                with lock:
                    records.append(rec)

    threads = [threading.Thread(target=client, name=f"client-{k}", daemon=True) for k in range(min(clients, len(reqs)))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "records": records, "clients": clients, "t0": t0, "t1": t0 + wall}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarise(load: dict, reqs: list[Req]) -> dict:
    """Per kind: counts, 503s, retries, latency p50/p99; and the run's checks."""
    recs: list[Rec] = load["records"]
    by_id: dict[int, list[Rec]] = {}
    for r in recs:
        by_id.setdefault(r.id, []).append(r)
    sent = {r.id for r in reqs}
    answer_ids = [r.answer_id for r in recs if r.status == 200 and r.answer_id and r.kind != "interrogate"]
    checks = {
        "requests": len(reqs),
        "answered": sum(1 for i in sent if len(by_id.get(i, [])) == 1 and by_id[i][0].status is not None),
        "unanswered": sorted(i for i in sent if not by_id.get(i) or by_id[i][0].status is None)[:20],
        "answered_twice": sorted(i for i, v in by_id.items() if len(v) > 1)[:20],
        "unknown_ids": sorted(set(by_id) - sent)[:20],
        "duplicate_answers": sorted(a for a, n in Counter(answer_ids).items() if n > 1)[:20],
        "wrong": [{"id": r.id, "kind": r.kind, "problem": r.problem} for r in recs if r.problem][:20],
        "content_differs": sum(1 for r in recs if r.content_ok is False),
    }
    checks["ok"] = (
        checks["answered"] == len(reqs)
        and not checks["answered_twice"]
        and not checks["unknown_ids"]
        and not checks["duplicate_answers"]
        and not checks["wrong"]
    )
    kinds = {}
    for kind in KINDS:
        rs = [r for r in recs if r.kind == kind]
        if not rs:
            continue
        lat = [r.latency_s for r in rs if r.status == 200]
        kinds[kind] = {
            "n": len(rs),
            "ok_200": sum(1 for r in rs if r.status == 200 and r.ok),
            "final_503": sum(1 for r in rs if r.status == 503),
            "seen_503": sum(r.n503 for r in rs),
            "retries": sum(r.retries for r in rs),
            "other": sum(1 for r in rs if r.status not in (200, 503)),
            "p50_ms": _ms(_pct(lat, 0.5)),
            "p99_ms": _ms(_pct(lat, 0.99)),
            "max_ms": _ms(max(lat) if lat else None),
        }
    n200 = sum(1 for r in recs if r.status == 200)
    return {
        "wall_s": round(load["wall_s"], 3),
        "clients": load["clients"],
        "throughput_rps": round(n200 / load["wall_s"], 2) if load["wall_s"] else None,
        "kinds": kinds,
        "checks": checks,
        "retry_after": sorted({r.retry_after for r in recs if r.retry_after}),
        "records": [[r.id, r.kind, r.status, round(r.latency_s, 4), r.retries] for r in sorted(recs, key=lambda r: r.id)],
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def _mib(v: int | None) -> float | None:
    return None if v is None else round(v / 2**20, 1)


def counters(server: Server) -> dict:
    return dict(server.status()["counters"])


def delta(after: dict, before: dict) -> dict:
    d = {k: after[k] - before.get(k, 0) for k in after}
    d["mean_batch"] = round(d["batched_images"] / d["batches"], 2) if d.get("batches") else None
    return d


# --- warm-up and references ------------------------------------------------------------------------


def warm_up(server: Server, pictures_b64: list[str], with_txt2img: bool) -> dict:
    """Each picture tagged and interrogated alone (the reference answers), one txt2img (loads the
    generator), so no measured request pays a first load."""
    import requests

    refs: dict[str, dict] = {"tag": {}, "interrogate": {}}
    with requests.Session() as s:
        for k, b64 in enumerate(pictures_b64):
            r = s.post(server.url + PATHS["tag"], json={"images": [b64], "names": [f"warm-{k}"]}, timeout=600)
            r.raise_for_status()
            refs["tag"][k] = [t["name"] for t in r.json()[0]["tags"]]
            r = s.post(server.url + PATHS["interrogate"], json={"image": b64, "model": "deepdanbooru"}, timeout=600)
            r.raise_for_status()
            refs["interrogate"][k] = r.json()["caption"]
        if with_txt2img:
            r = s.post(
                server.url + PATHS["txt2img"],
                json={"prompt": "warm up", "seed": 1, "steps": 2, "width": 64, "height": 64},
                timeout=600,
            )
            if r.status_code != 200:
                raise SystemExit(f"txt2img warm-up failed: HTTP {r.status_code}: {r.text[:500]}\n{server.log_tail()}")
    return refs


# --- the tagger alone, in this process -------------------------------------------------------------


def probe_tagger(args, models: dict, pictures: list[Path]) -> dict:
    """Milliseconds per image of decode (base64 + PNG), preprocess and the forward pass (1 image, and
    ``tag_batch`` images at once) with the tagger in this process: what the model costs."""
    from tagloop.api import load_tagger
    from tagloop.server.images import decode_image
    from tagloop.tagger.run import make_tag_options, prepare_image, run_prepared

    tagger = load_tagger(models["tagger"], device=args.device)
    opts = make_tag_options(workers=1)
    b64 = [b64_file(p) for p in pictures]
    reps = max(4, min(16, args.tag_batch))

    def timed(fn, n):
        """The median seconds of ``n`` calls (robust to other work on the machine) and their results."""
        times, out = [], []
        for i in range(n):
            t0 = time.perf_counter()
            out.append(fn(i))
            times.append(time.perf_counter() - t0)
        return _pct(times, 0.5), out

    t0 = time.perf_counter()
    run_prepared(tagger, [prepare_image(tagger, decode_image(b64[0], 10**9), "w", opts)], [opts])  # warm
    slow = time.perf_counter() - t0 > 0.25  # a full-size model on a CPU: fewer repeats
    reps = 4 if slow else reps
    decode_s, images = timed(lambda i: decode_image(b64[i % len(b64)], 10**9), reps)
    prep_s, prepared = timed(lambda i: prepare_image(tagger, images[i], f"p{i}", opts), reps)
    single_s, _ = timed(lambda i: run_prepared(tagger, [prepared[i]], [opts]), reps)
    batch = [prepared[i % reps] for i in range(args.tag_batch)]
    run_prepared(tagger, batch, [opts] * len(batch))  # warm this shape
    batched_s, _ = timed(lambda i: run_prepared(tagger, batch, [opts] * len(batch)), 1 if slow else 3)
    batched_s /= len(batch)
    return {
        "tagger": tagger.describe() if hasattr(tagger, "describe") else str(tagger),
        "decode_ms": _ms(decode_s),
        "preprocess_ms": _ms(prep_s),
        "forward_1_ms": _ms(single_s),
        f"forward_{args.tag_batch}_ms_per_image": _ms(batched_s),
        "batch": args.tag_batch,
    }


# --- output ----------------------------------------------------------------------------------------


def machine(args) -> dict:
    m: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    m["device"] = args.device
    try:
        import torch

        m["torch"] = torch.__version__
        m["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            m["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    for mod in ("fastapi", "uvicorn", "requests"):
        try:
            m[mod] = __import__(mod).__version__
        except Exception:
            pass
    return m


def _commit() -> str | None:
    """The checkout's commit, as bench/reproduce.py records it."""
    from reproduce import _commit as commit  # bench/ is on sys.path when this script runs

    return commit()


def _f(v, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(res: dict) -> None:
    print(f"\n{res['tagger_note']}")
    print(
        f"{'load':<24}{'kind':<12}{'n':>5}{'200':>5}{'503':>5}{'seen':>5}{'retry':>6}{'other':>6}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'others%':>9}"
    )
    for name, s in res["loads"].items():
        if s.get("tag_only"):
            continue  # in the batching table below
        first = True
        for kind, k in s["kinds"].items():
            print(
                f"{name if first else '':<24}{kind:<12}{k['n']:>5}{k['ok_200']:>5}{k['final_503']:>5}{k['seen_503']:>5}"
                f"{k['retries']:>6}{k['other']:>6}{_f(k['p50_ms']):>9}{_f(k['p99_ms']):>9}"
                f"{(_f(s['throughput_rps'], '.1f') if first else ''):>8}"
                f"{(_f((s['cpu'] or {}).get('others_pct'), '.0f') if first else ''):>9}"
            )
            first = False
    print("\nchecks (every request answered once, answers match their requests, no id twice):")
    for name, s in res["loads"].items():
        c = s["checks"]
        extra = f"; {c['content_differs']} answers differ from the picture asked alone" if c["content_differs"] else ""
        bad = (
            ""
            if c["ok"]
            else f"  <-- unanswered {c['unanswered']}, twice {c['answered_twice']}, dup {c['duplicate_answers']}, wrong {c['wrong'][:3]}"
        )
        print(f"  {name:<24}{'ok' if c['ok'] else 'FAILED'}: {c['answered']}/{c['requests']} answered{extra}{bad}")
    mem = res["memory"]
    print(f"\nserver RSS (MiB), mixed server: after warm-up {_f(mem['after_warmup_mib'], '.1f')}")
    for r in mem["rounds"]:
        before = "warm-up" if r["round"] == 1 else "round before"
        g = "" if r.get("growth_mib") is None else f", growth from {before} {r['growth_mib']:+.1f}"
        print(f"  round {r['round']}: peak {_f(r['peak_mib'], '.1f')}, end {_f(r['end_mib'], '.1f')}{g}")
    print(f"  end of all loads on it {_f(mem['end_mib'], '.1f')}, peak {_f(mem['peak_mib'], '.1f')}")
    b = res["batching"]
    print(f"\ntag-only, one image a request ({b['requests']} requests a run, {b['repeats']} runs of each way, interleaved):")
    print(f"{'way':<40}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'batches':>9}{'mean batch':>12}   each run (CPU of other work)")
    for key, label in (
        ("batched", f"{b['clients']} clients, --tag-batch {b['tag_batch']}"),
        ("unbatched", f"{b['clients']} clients, --tag-batch 1 (A1111 lock)"),
        ("sequential", "1 client, one request at a time"),
    ):
        w = b[key]
        print(
            f"{label:<40}{w['images_per_s']:>10.1f}{_f(w['p50_ms']):>9}{_f(w['p99_ms']):>9}"
            f"{_f(w['counters'].get('batches')):>9}{_f(w['counters'].get('mean_batch'), '.2f'):>12}"
            f"   {'  '.join(f'{x:.1f} ({_f(o)}%)' for x, o in zip(w['images_per_s_all'], w['others_cpu_pct_all']))}"
        )
    print(
        f"batched / unbatched {b['ratio_batched_vs_unbatched']:.2f}x, batched / sequential {b['ratio_batched_vs_sequential']:.2f}x, "
        f"unbatched / sequential {b['ratio_unbatched_vs_sequential']:.2f}x (target >= 5x under {b['clients']} clients)"
    )
    p = res.get("probe")
    if p:
        per_batch = p[f"forward_{p['batch']}_ms_per_image"]
        print(
            f"the tagger alone: decode {p['decode_ms']} ms, preprocess {p['preprocess_ms']} ms, forward {p['forward_1_ms']} ms "
            f"(1 image), {per_batch} ms/image ({p['batch']} at once); "
            f"sequential request {b['sequential']['p50_ms']:.1f} ms (p50)"
        )
        print(res["verdict"])
    print("\nshutdown (SIGTERM):")
    for name, s in res["servers"].items():
        st = s["stop"]
        line = f"  {name:<12}exited {'yes' if st['exited_on_sigterm'] else 'NO (killed)'}, rc {st['rc']}, {st['exit_s']} s"
        if "inflight" in st:
            got = ", ".join(f"{r['kind']} {r['status']}" for r in st["inflight"])
            line += (
                f"; requests in flight at the signal: {got} ({'all answered' if st['inflight_answered'] else 'NOT all answered'})"
            )
        print(line + ("; errors in its log" if st.get("log_errors") else ""))
    print("  (rc -15: uvicorn re-raises SIGTERM after its graceful shutdown)")
    print(
        f"\nmachine: {res['machine']['cpus']} CPUs, torch {res['machine'].get('torch')}, device {res['machine']['device']}"
        f", load average {res['loadavg_start']} -> {res['loadavg_end']} (other work on this machine makes figures noisy)"
    )


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tagger", default=None, help="tagger model (any `tagloop serve --tagger`); default: built here")
    ap.add_argument("--tagger-kind", choices=["tiny", "dd-full"], default="tiny", help="what to build when --tagger is not given")
    ap.add_argument("--model", default=None, help="SD model (any `tagloop serve --model`); default: the tiny demo SD1")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--host", default="127.0.0.1", help="loopback only: 127.0.0.1, localhost or ::1")
    ap.add_argument("--requests", type=int, default=200, help="mixed requests a round")
    ap.add_argument("--rounds", type=int, default=2, help="mixed rounds in a row on one server (memory growth between them)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--txt2img-share", type=float, default=0.25)
    ap.add_argument("--tag-requests", type=int, default=None, help="tag-only requests per way (default: --requests)")
    ap.add_argument("--tag-repeats", type=int, default=3, help="tag-only runs of each way, interleaved (the median is reported)")
    ap.add_argument("--tag-batch", type=int, default=32, help="the batched server's --tag-batch")
    ap.add_argument("--queue-size", type=int, default=64, help="the servers' --queue-size (not the small-queue one)")
    ap.add_argument("--small-queue", type=int, default=4, help="--queue-size of the 503 scenario (0: skip it)")
    ap.add_argument("--retry", action="store_true", help="clients send a 503'd request again after its Retry-After")
    ap.add_argument("--max-retries", type=int, default=50)
    ap.add_argument(
        "--reconnect",
        action="store_true",
        help="with --retry: a new connection for the retry (else the kept-alive one, as requests.Session does)",
    )
    ap.add_argument("--image-size", type=int, default=256, help="side of the PNG pictures sent")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-probe", action="store_true", help="do not time the tagger alone in this process")
    ap.add_argument("--work-dir", default=None, help="keep models and logs here (default: a temporary folder, removed)")
    ap.add_argument("--json", default=str(Path(__file__).with_name("serve_load.json")))
    args = ap.parse_args(argv)
    if args.host not in LOOPBACK:
        raise SystemExit(
            f"--host must be a loopback address ({', '.join(LOOPBACK)}), not {args.host!r}: this bench serves nobody else."
        )
    if not 0 <= args.txt2img_share <= 1:
        raise SystemExit("--txt2img-share must be in 0..1")
    if min(args.requests, args.rounds, args.clients, args.tag_batch, args.tag_repeats) < 1:
        raise SystemExit("--requests, --rounds, --clients, --tag-batch and --tag-repeats must be >= 1")
    tag_n = args.tag_requests or args.requests
    with_txt2img = args.txt2img_share > 0

    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tagloop-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    ids = Ids()
    loads: dict[str, dict] = {}
    servers: dict[str, dict] = {}
    live: list[Server] = []

    def start(name: str, **kw) -> Server:
        srv = Server(args, models, work / f"server-{name}.log", **kw)
        live.append(srv)
        print(
            f"[{name}] server on {srv.url} (--tag-batch {kw['tag_batch']} --queue-size {kw['queue_size']}) up in {srv.start_s} s",
            flush=True,
        )
        return srv

    def finish(name: str, srv: Server, inflight: bool = False) -> None:
        stop = srv.stop(inflight=(shutdown_requests(), pictures_b64, refs, args) if inflight else None)
        live.remove(srv)
        servers[name] = {
            "cmd": srv.cmd,
            "start_s": srv.start_s,
            "tag_batch": srv.tag_batch,
            "queue_size": srv.queue_size,
            "stop": stop,
        }
        print(f"[{name}] SIGTERM: exited {stop['exited_on_sigterm']} rc {stop['rc']} in {stop['exit_s']} s", flush=True)

    def shutdown_requests() -> list[Req]:
        """One long txt2img running (a plain tag request without a model) and three tag requests waiting."""
        first = [Req(ids.take(1)[0], "txt2img", steps=30)] if with_txt2img else []
        return first + [Req(i, "tag", picture=i % N_PICTURES) for i in ids.take(3)]

    def load(name: str, srv: Server, reqs: list[Req], clients: int) -> dict:
        pids = [x.proc.pid for x in live]
        cpu0 = cpu_snapshot(pids)
        got = run_load(srv.url, reqs, clients, pictures_b64, refs, args)
        s = summarise(got, reqs)
        s["cpu"] = cpu_use(cpu0, cpu_snapshot(pids), got["wall_s"])
        s["t0"], s["t1"] = got["t0"], got["t1"]
        loads[name] = s
        c = s["checks"]
        cpu = s["cpu"] or {}
        print(
            f"[{name}] {len(reqs)} requests, {clients} clients: {s['wall_s']:.1f} s, {s['throughput_rps']} req/s, "
            f"checks {'ok' if c['ok'] else 'FAILED'}; CPU: servers {cpu.get('servers_pct')}%, clients "
            f"{cpu.get('clients_pct')}%, other work on the machine {cpu.get('others_pct')}%",
            flush=True,
        )
        return s

    try:
        pictures = make_pictures(work / "pictures", args.image_size)
        pictures_b64 = [b64_file(p) for p in pictures]
        models = build(args, work, pictures)
        print(f"models ready in {models['seconds']} s: tagger {models['tagger']}, model {models['model']}", flush=True)

        # 1. mixed rounds, then tag-only batched and sequential, on one server
        srv = start("mixed", tag_batch=args.tag_batch, queue_size=args.queue_size)
        refs = warm_up(srv, pictures_b64, with_txt2img)
        if len(set(refs["interrogate"].values())) < N_PICTURES:
            print("note: some pictures share a caption; a crossed interrogate answer between them would not show", flush=True)
        rss_warm = srv.sampler.now()
        rounds = []
        for k in range(args.rounds):
            s = load(f"mixed round {k + 1}", srv, make_requests(ids.take(args.requests), args.txt2img_share, rng), args.clients)
            end = srv.sampler.now()
            rounds.append(
                {"round": k + 1, "peak_mib": _mib(srv.sampler.peak(s["t0"], s["t1"])), "end_mib": _mib(end), "end": end}
            )
        if rss_warm and rounds[0]["end"]:
            rounds[0]["growth_mib"] = round((rounds[0]["end"] - rss_warm) / 2**20, 1)
        for a, b in zip(rounds, rounds[1:]):
            b["growth_mib"] = round((b["end"] - a["end"]) / 2**20, 1) if a["end"] and b["end"] else None
        # 2. tag-only, one image a request: batched (this server), the naive way (a --tag-batch 1 server
        # beside it: each request its own forward pass, as A1111's one lock runs them) and one client
        # at a time; interleaved --tag-repeats times, so other work on the machine hits all three alike
        naive = start("unbatched", tag_batch=1, queue_size=args.queue_size)
        warm_up(naive, pictures_b64, False)
        tag_runs: dict[str, list[dict]] = {"batched": [], "unbatched": [], "sequential": []}
        for rep in range(args.tag_repeats):
            for key, server, clients in (
                ("batched", srv, args.clients),
                ("unbatched", naive, args.clients),
                ("sequential", srv, 1),
            ):
                before = counters(server)
                reqs = make_requests(ids.take(tag_n), 0.0, rng, tag_only=True)
                got = load(f"tag {key} #{rep + 1}", server, reqs, clients)
                got["counters"] = delta(counters(server), before)
                got["tag_only"] = True
                tag_runs[key].append(got)
        finish("unbatched", naive)
        samples = [r for _, r in srv.sampler.samples]
        memory = {
            "after_warmup_mib": _mib(rss_warm),
            "rounds": [{k: v for k, v in r.items() if k != "end"} for r in rounds],
            "end_mib": _mib(srv.sampler.now()),
            "peak_mib": _mib(max(samples) if samples else None),
            "samples": len(samples),
        }
        finish("mixed", srv, inflight=True)

        # 3. a small queue: 503 with Retry-After, nothing lost
        if args.small_queue:
            srv = start("small-queue", tag_batch=args.tag_batch, queue_size=args.small_queue)
            warm_up(srv, pictures_b64, with_txt2img)
            before = counters(srv)
            sq = load(
                f"mixed, queue {args.small_queue}",
                srv,
                make_requests(ids.take(args.requests), args.txt2img_share, rng),
                args.clients,
            )
            sq["counters"] = delta(counters(srv), before)
            finish("small-queue", srv)

        if not args.no_probe:
            cpu0, t0 = cpu_snapshot([]), time.perf_counter()
            probe = probe_tagger(args, models, pictures)
            probe["cpu"] = cpu_use(cpu0, cpu_snapshot([]), time.perf_counter() - t0)
        else:
            probe = None
    finally:
        for srv in list(live):  # a failed run leaves no server behind
            try:
                srv.stop()
            except Exception:
                srv.proc.kill()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    def way(runs: list[dict]) -> dict:
        rates = [r["kinds"]["tag"]["ok_200"] / r["wall_s"] for r in runs]
        total = {k: sum(r["counters"][k] for r in runs) for k in runs[0]["counters"] if k != "mean_batch"}
        total["mean_batch"] = round(total["batched_images"] / total["batches"], 2) if total.get("batches") else None
        return {
            "images_per_s": round(_pct(rates, 0.5), 2),  # the median of the repeats
            "images_per_s_all": [round(x, 2) for x in rates],
            "others_cpu_pct_all": [(r["cpu"] or {}).get("others_pct") for r in runs],
            "p50_ms": _pct([r["kinds"]["tag"]["p50_ms"] for r in runs], 0.5),
            "p99_ms": _pct([r["kinds"]["tag"]["p99_ms"] for r in runs], 0.5),
            "counters": total,
        }

    bat = {
        "requests": tag_n,
        "clients": args.clients,
        "tag_batch": args.tag_batch,
        "repeats": args.tag_repeats,
        **{key: way(runs) for key, runs in tag_runs.items()},
    }
    bat["ratio_batched_vs_unbatched"] = bat["batched"]["images_per_s"] / bat["unbatched"]["images_per_s"]
    bat["ratio_batched_vs_sequential"] = bat["batched"]["images_per_s"] / bat["sequential"]["images_per_s"]
    bat["ratio_unbatched_vs_sequential"] = bat["unbatched"]["images_per_s"] / bat["sequential"]["images_per_s"]
    verdict = ""
    if probe:
        share = probe["forward_1_ms"] / bat["sequential"]["p50_ms"]
        gain = probe["forward_1_ms"] / probe[f"forward_{args.tag_batch}_ms_per_image"]
        verdict = (
            f"the forward pass of one image is {share:.0%} of a sequential request (p50): "
            + ("the model's compute dominates" if share >= 0.5 else "HTTP, JSON, base64, decoding and preprocessing dominate")
            + f"; the forward pass alone runs {gain:.2f}x as fast per image with {args.tag_batch} images at once as with one "
            "on this device (the rest of a batched server's gain is fewer hand-offs between request threads and the worker)."
        )
        probe["forward_batch_gain"] = round(gain, 2)
        others = max((probe["cpu"] or {}).get("others_pct") or 0, (bat["sequential"]["others_cpu_pct_all"] or [0])[-1] or 0)
        if others > 20:
            verdict += f" (other work took up to {others:.0f}% of the CPU meanwhile: these two figures are not reliable)"
        probe["forward_share_of_sequential"] = round(share, 3)
    note = (
        "tiny demo DeepDanbooru (random weights)"
        if args.tagger is None and args.tagger_kind == "tiny"
        else "full-size DeepDanbooru v3 (random weights, 512x512 input)"
        if args.tagger is None
        else f"tagger {args.tagger}"
    )
    for s in loads.values():
        s.pop("t0", None)
        s.pop("t1", None)
    res = {
        "tagger_note": f"{note}; device {args.device}; {args.requests} mixed requests x {args.rounds} rounds, "
        f"{args.clients} clients, txt2img share {args.txt2img_share}, retry {('on, reconnecting' if args.reconnect else 'on') if args.retry else 'off'}",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "models": models,
        "loads": loads,
        "memory": memory,
        "batching": bat,
        "probe": probe,
        "verdict": verdict,
        "servers": servers,
        "machine": machine(args),
        "loadavg_start": loadavg_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python", *sys.argv]) if argv is None else "python bench/serve_load.py " + " ".join(argv),
        "commit": _commit(),
    }
    ok = all(s["checks"]["ok"] for s in loads.values()) and all(
        s["stop"]["exited_on_sigterm"] and s["stop"].get("inflight_answered", True) for s in servers.values()
    )
    res["ok"] = ok
    print_table(res)
    Path(args.json).write_text(json.dumps(res, indent=1, default=_json_default) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0 if ok else 1


def _json_default(o):
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
