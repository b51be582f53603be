"""Bulk-tagging throughput: tagloop's pipeline vs the naive one-image loop (as A1111 does) vs imgutils.

Default run (the peer comparison, CPU): ``--files`` generated JPEG and PNG files of mixed sizes
(512 to 2048 px on each side, drawn shapes plus noise, a few PNGs with alpha), written once to a work
folder, tagged by a tiny WD14-layout ONNX graph (448x448 input, two outputs like imgutils' "with
embeddings" re-exports, ~11k labels). The graph's own compute is a few milliseconds per image, so
what is timed is the host pipeline: decode, EXIF, edge density, preprocessing, thresholds. Its head
bias is shifted so that about 30 tags pass 0.35, as for a trained tagger. Weights are random.

Modes, each in a fresh process (so that peak RSS is its own):

* ``naive``: one image at a time through tagloop's tagger (decode, Canny edge density, preprocess,
  ``predict`` on a batch of 1, thresholds), nothing overlapping: A1111's interrogate loop;
* ``imgutils``: ``imgutils.tagging.get_wd14_tags`` per file (its normal use), run by the interpreter
  of ``--imgutils-python`` (its own virtual environment; see below), the model served under its
  hub names by a loopback stand-in of the hub (``tests/hubserver.py``);
* ``tagloop``: ``tag_sources`` with decode threads ahead of batched inference, adaptive threshold;
* ``tagloop-fixed``: the same with a fixed threshold and no Canny (imgutils' amount of work);
* ``tagloop-fast``: the same as ``tagloop`` with ``TagOptions(fast_decode=True)`` (large JPEGs are
  decoded at a reduced DCT scale); the score, band and tag-set deviations from ``tagloop`` are reported.

Per mode: images/s, wall and host CPU ms per image, the share of the wall time the model waits for
input (``1 - time in predict / wall``), peak RSS. Every mode's process is started and warmed up first;
then ``--repeats`` rounds each run one timed pass of every mode in turn (rotating order), so that a
busy spell on a shared machine falls on all modes alike. The table shows each mode's fastest pass
(the one least disturbed); "paired" is the median over rounds of imgutils' wall time over the mode's.

    python bench/tag_throughput.py                                    # 48 files, imgutils if importable
    python -m venv <work>/imgutils-venv && <work>/imgutils-venv/bin/pip install dghs-imgutils onnxruntime
    python bench/tag_throughput.py --files 48 --imgutils-python <work>/imgutils-venv/bin/python

Single-model mode (``--model``: both loops in one process on a full-size architecture, synthetic
JPEGs of one size), as before:

    python bench/tag_throughput.py --model dd-full --images 8        # CPU: full DeepDanbooru v3
    python bench/tag_throughput.py --model dd-full --device cuda --dtype bf16 --images 512 --batch-size 64
    python bench/tag_throughput.py --model wd-vit-v3 --device cuda --images 512 --batch-size 64
    python bench/tag_throughput.py --model dd-tiny --images 64       # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# WD v3 architectures in timm terms (full size; random weights), for the PyTorch WD path.
# (model_args as in the releases' config.json; wd-swinv2-tagger-v3's was checked, the others follow
# the same pattern: 448 input, tanh GELU, and for ViT no class token with average pooling.)
WD_TIMM = {
    "wd-vit-v3": (
        "vit_base_patch16_224",
        {"img_size": 448, "act_layer": "gelu_tanh", "class_token": False, "global_pool": "avg", "fc_norm": False},
    ),
    "wd-swinv2-v3": ("swinv2_base_window8_256", {"img_size": 448, "window_size": 14, "act_layer": "gelu_tanh"}),
    "wd-convnext-v3": ("convnext_base", {}),
    "wd-eva02-large-v3": ("eva02_large_patch14_448", {}),
}

# --- the peer comparison -----------------------------------------------------------------------

#: model input side (the WD14 family's; imgutils reads it from the graph)
MODEL_SIZE = 448
NUM_GENERAL, NUM_CHARACTER = 9000, 2000
#: tags above 0.35 per image the random head is shifted to (a trained WD tagger gives 20-40)
TARGET_TAGS = 30
#: imgutils' model name and where its wd14.py fetches that model from
IMGUTILS_MODEL_NAME = "SwinV2_v3"
IMGUTILS_TAG_REPO = "SmilingWolf/wd-swinv2-tagger-v3"  # selected_tags.csv
IMGUTILS_EMB_REPO = "deepghs/wd14_tagger_with_embeddings"  # <tag repo>/model.onnx
FILES_VERSION = 1
MODES = ("naive", "imgutils", "tagloop", "tagloop-fixed", "tagloop-fast")


def _mode_label(mode: str, batch_size: int, workers: int) -> str:
    return {
        "naive": "naive loop (1 image at a time, A1111's way)",
        "imgutils": "imgutils get_wd14_tags, 1 image at a time",
        "tagloop": f"tagloop tag_sources (bs {batch_size}, {workers} threads)",
        "tagloop-fixed": "tagloop, fixed threshold, no Canny",
        "tagloop-fast": "tagloop, fast_decode=True",
    }[mode]


def _draw(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A gradient, large outlined shapes, ``detail``-many small strokes, then Gaussian noise: RGB uint8."""
    from PIL import ImageDraw

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1, c2 = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
    base = c0 + (xx / w)[..., None] * (c1 - c0) + (yy / h)[..., None] * (c2 - c0) * 0.5
    del xx, yy
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    del base
    d = ImageDraw.Draw(img)
    side = max(w, h)
    for _ in range(int(rng.integers(4, 16))):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        s = rng.uniform(0.1, 0.6) * side
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = [x0, y0, x0 + s, y0 + s * rng.uniform(0.5, 1.5)]
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=col, outline=(0, 0, 0), width=max(2, side // 300))
    detail = float(rng.uniform(0, 1))
    for _ in range(int(detail**2 * side * 2.5)):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(4, 40) * side / 1024
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        k = rng.random()
        if k < 0.4:
            d.line([x0, y0, x0 + rng.normal() * s * 3, y0 + rng.normal() * s * 3], fill=col, width=max(1, int(s / 8)))
        elif k < 0.7:
            d.ellipse([x0, y0, x0 + s, y0 + s], outline=col, width=max(1, int(s / 10)))
        else:
            d.rectangle([x0, y0, x0 + s, y0 + s * 0.6], fill=col)
    arr = np.asarray(img).astype(np.int16)
    arr += rng.normal(0, rng.uniform(2, 10), arr.shape).astype(np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_mixed_files(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` files, sides 512..2048 px: 3 in 4 JPEG (quality 85-95), 1 in 4 PNG (every other one RGBA).

    File ``i`` depends only on ``(seed, i)``; a folder already holding the same set is reused.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        records = json.loads(manifest.read_text(encoding="utf-8"))
        if len(records) == n and all((folder / r["name"]).is_file() for r in records):
            return records
    records = []
    t0 = time.perf_counter()
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        w, h = (int(v) for v in rng.integers(512, 2049, 2))
        arr = _draw(rng, w, h)
        if i % 4 == 3:
            name, fmt = f"{i:05d}.png", "PNG"
            img = Image.fromarray(arr)
            if i % 8 == 7:  # transparent outside a large ellipse, as cut-out art is
                from PIL import ImageDraw

                alpha = Image.new("L", (w, h), 0)
                ImageDraw.Draw(alpha).ellipse([w * 0.05, h * 0.05, w * 0.95, h * 0.95], fill=255)
                img.putalpha(alpha)
            img.save(folder / name)
        else:
            name, fmt = f"{i:05d}.jpg", "JPEG"
            Image.fromarray(arr).save(folder / name, quality=int(rng.integers(85, 96)))
        records.append({"name": name, "format": fmt, "size": [w, h], "alpha": fmt == "PNG" and i % 8 == 7})
    manifest.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {n} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return records


def ensure_model(folder: Path, files_dir: Path, records: list[dict]) -> dict:
    """The tiny WD14 graph at 448 with embeddings, its head bias shifted so ~TARGET_TAGS tags pass 0.35.

    The shift moves every non-rating logit by one constant, chosen on (up to) 12 of the files: the
    logits are ``embedding @ W.T + b`` from the graph's second output.
    """
    meta_file = folder / "meta.json"
    if meta_file.is_file() and (folder / "model.onnx").is_file():
        return json.loads(meta_file.read_text(encoding="utf-8"))
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from tagloop.tagger.preprocess import load_image, wd14
    from tagloop.testing import save_tiny_wd14_onnx

    save_tiny_wd14_onnx(folder, num_general=NUM_GENERAL, num_character=NUM_CHARACTER, size=MODEL_SIZE, with_embedding=True)
    model = onnx.load(str(folder / "model.onnx"))
    init = {t.name: t for t in model.graph.initializer}
    weight = numpy_helper.to_array(init["head.weight"]).astype(np.float64)
    bias = numpy_helper.to_array(init["head.bias"]).astype(np.float64)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    sample = [files_dir / r["name"] for r in records[:12]]
    x = np.stack([wd14(load_image(p), MODEL_SIZE) for p in sample]).astype(np.float32)
    emb = sess.run(["embedding"], {sess.get_inputs()[0].name: x})[0].astype(np.float64)
    logits = emb @ weight.T + bias
    rest = logits[:, 4:]  # the 4 rating rows stay as they are
    shift = float(np.quantile(rest, 1.0 - TARGET_TAGS / rest.shape[1])) - math.log(0.35 / 0.65)
    bias[4:] -= shift
    init["head.bias"].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), "head.bias"))
    onnx.save(model, str(folder / "model.onnx"))
    passed = ((logits[:, 4:] - shift) > math.log(0.35 / 0.65)).sum(axis=1)
    meta = {
        "labels": int(weight.shape[0]),
        "general": NUM_GENERAL,
        "character": NUM_CHARACTER,
        "input": MODEL_SIZE,
        "head_shift": shift,
        "tags_above_0.35_on_sample": [int(v) for v in passed],
    }
    meta_file.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def _proc_status_mib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_mib() -> float:
    return _proc_status_mib("VmRSS")


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over fork and
    exec, so a child would report the parent's peak when that is larger."""
    peak = _proc_status_mib("VmHWM")
    if math.isnan(peak):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return peak


def _rusage_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Meter:
    """Time spent in the model call and the rows it returned, per timed pass."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.model_s = 0.0
        self.rows: list[np.ndarray] = []

    def wrap(self, fn, take_rows):
        def timed(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            self.model_s += time.perf_counter() - t
            self.rows.append(np.array(take_rows(out), dtype=np.float32, copy=True))
            return out

        return timed


class _Passes:
    """Timed passes over the files, one at a time on request; the last pass's output is kept."""

    def __init__(self, run_once, meter: _Meter, cpu_clock, stages: dict | None = None) -> None:
        self.run_once, self.meter, self.cpu_clock, self.stages = run_once, meter, cpu_clock, stages
        self.runs: list[dict] = []
        self.out = None

    def one(self) -> dict:
        self.meter.reset()
        for k in self.stages or ():
            self.stages[k] = 0.0
        c0, t0 = self.cpu_clock(), time.perf_counter()
        self.out = self.run_once()
        wall, cpu = time.perf_counter() - t0, self.cpu_clock() - c0
        run = {"wall_s": wall, "cpu_s": cpu, "model_s": self.meter.model_s}
        if self.stages is not None:
            run["stages_s"] = dict(self.stages)
        self.runs.append(run)
        return run


def _setup_tagloop(mode: str, paths: list[Path], model_dir: Path, args):
    from dataclasses import fields

    from tagloop.api import load_tagger
    from tagloop.tagger.preprocess import load_image
    from tagloop.tagger.run import TagOptions, build_result, tag_sources
    from tagloop.tagger.threshold import edge_density

    tagger = load_tagger(str(model_dir), device="cpu")
    opts: dict = {"batch_size": args.batch_size, "workers": args.workers}
    if mode == "tagloop-fast":
        if "fast_decode" not in {f.name for f in fields(TagOptions)}:
            raise SystemExit("this tagloop has no TagOptions.fast_decode")
        opts["fast_decode"] = True
    if mode == "tagloop-fixed":
        opts.update(threshold=0.35, compute_edge_density=False)
    options = TagOptions(**opts)
    meter = _Meter()
    tagger.predict = meter.wrap(tagger.predict, lambda out: out)
    stages = dict.fromkeys(("decode", "edge_density", "preprocess", "predict", "thresholds"), 0.0)

    def naive_once(ps):
        results = []
        for p in ps:
            t0 = time.perf_counter()
            img = load_image(p)
            t1 = time.perf_counter()
            d = edge_density(img)
            t2 = time.perf_counter()
            x = tagger.preprocess(img)[None]
            t3 = time.perf_counter()
            probs = tagger.predict(x)
            t4 = time.perf_counter()
            results.append(build_result(tagger, str(p), probs[0], d, options))
            t5 = time.perf_counter()
            for k, a, b in zip(stages, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
                stages[k] += b - a
        return results

    def pipeline_once(ps):
        return list(tag_sources(tagger, [str(p) for p in ps], options))

    once = naive_once if mode == "naive" else pipeline_once
    once(paths[:2])  # warm-up: session, thread pool, first allocations
    rss_ready = _rss_mib()
    passes = _Passes(lambda: once(paths), meter, time.process_time, stages if mode == "naive" else None)

    def finish(results) -> tuple[dict, dict]:
        errors = [r.error for r in results if r.error]
        if errors:
            raise SystemExit(f"{len(errors)} files failed: {errors[0]}")
        index = {name: i for i, name in enumerate(tagger.tags)}
        kept = np.zeros((len(results), len(tagger.tags)), dtype=bool)
        for row, r in enumerate(results):
            kept[row, [index[t.name] for t in r.tags]] = True
        info = {
            "options": opts,
            "tagger": tagger.describe().replace(str(model_dir), "<model>"),
            "rss_ready_mib": rss_ready,
            "per_image": [{"edge_density": r.edge_density, "band": r.complexity, "tags": len(r.tags)} for r in results],
        }
        return info, {"probs": np.concatenate(meter.rows), "kept": kept}

    return passes, finish


def _setup_imgutils(paths: list[Path], args):
    from importlib.metadata import version

    import onnxruntime
    from imgutils.tagging import get_wd14_tags, wd14

    name = IMGUTILS_MODEL_NAME
    get_wd14_tags(str(paths[0]), model_name=name)  # fetches model.onnx + selected_tags.csv, opens the session
    model = wd14._get_wd14_model(name)  # the cached session get_wd14_tags uses
    meter = _Meter()
    model.run = meter.wrap(model.run, lambda out: out[0][0])
    stages = {"decode_pad_resize": 0.0, "postprocess": 0.0}

    def timed_stage(key, fn):  # get_wd14_tags looks both helpers up in its module at each call
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stages[key] += time.perf_counter() - t

        return timed

    wd14._prepare_image_for_tagging = timed_stage("decode_pad_resize", wd14._prepare_image_for_tagging)
    wd14._postprocess_embedding = timed_stage("postprocess", wd14._postprocess_embedding)

    def once(ps):
        return [get_wd14_tags(str(p), model_name=name) for p in ps]

    once(paths[:2])
    rss_ready = _rss_mib()
    passes = _Passes(lambda: once(paths), meter, _rusage_cpu, stages)

    def finish(results) -> tuple[dict, dict]:
        for r in passes.runs:
            r["stages_s"]["predict"] = r["model_s"]
        tag_names = wd14._get_wd14_labels(name)[0]
        index = {t: i for i, t in enumerate(tag_names)}
        kept = np.zeros((len(results), len(tag_names)), dtype=bool)
        for row, (_, general, character) in enumerate(results):
            kept[row, [index[t] for t in [*general, *character]]] = True
        info = {
            "versions": {
                "dghs-imgutils": version("dghs-imgutils"),
                "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__,
                "pillow": Image.__version__,
                "python": platform.python_version(),
            },
            "providers": model.get_providers(),
            "rss_ready_mib": rss_ready,
            "per_image": [{"tags": len(g) + len(c)} for _, g, c in results],
        }
        return info, {"probs": np.stack(meter.rows), "kept": kept}

    return passes, finish


def child_main(args) -> int:
    """One mode in this process. With ``--serve``: say ``ready`` after the warm-up, then run one pass
    per ``pass`` line on stdin (answering ``done``) until ``finish``; else ``--repeats`` passes."""
    work = Path(args.work)
    files_dir = work / _files_dir_name(args)
    records = json.loads((files_dir / "manifest.json").read_text(encoding="utf-8"))
    paths = [files_dir / r["name"] for r in records]
    if args.only == "imgutils":
        passes, finish = _setup_imgutils(paths, args)
    else:
        passes, finish = _setup_tagloop(args.only, paths, work / "model", args)
    if args.serve:
        proto, sys.stdout = sys.stdout, sys.stderr  # nothing else may write to the protocol's pipe
        print("ready", file=proto, flush=True)
        for line in sys.stdin:
            if line.strip() != "pass":
                break
            run = passes.one()
            print(f"done {run['wall_s']:.6f}", file=proto, flush=True)
    else:
        for _ in range(max(1, args.repeats)):
            passes.one()
    info, arrays = finish(passes.out)
    rec = {"runs": passes.runs, **info, "rss_peak_mib": _peak_rss_mib()}
    out = work / "out"
    out.mkdir(exist_ok=True)
    np.savez(out / f"{args.only}.npz", **arrays)
    (out / f"{args.only}.json").write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    return 0


def _files_dir_name(args) -> str:
    return f"files-v{FILES_VERSION}-n{args.files}-s{args.seed}"


def _hub_server_class():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tagloop_bench_hubserver", ROOT / "tests" / "hubserver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.HubServer


def _child_command(mode: str, args, python: str) -> list[str]:
    cmd = [python, str(Path(__file__).resolve()), "--only", mode, "--serve", "--work", str(args.work)]
    cmd += ["--files", str(args.files), "--seed", str(args.seed)]
    return cmd + ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]


class _Child:
    """A mode's process, waiting for ``pass`` commands."""

    def __init__(self, mode: str, cmd: list[str], env: dict[str, str] | None, log: Path) -> None:
        self.mode, self.log = mode, log
        self.err = open(log, "w", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)

    def expect(self, word: str) -> str:
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            self.proc.kill()
            self.proc.wait()
            self.err.close()
            raise SystemExit(f"mode {self.mode} failed:\n{self.log.read_text(encoding='utf-8')[-3000:]}")
        return line

    def run_pass(self) -> float:
        self.proc.stdin.write("pass\n")
        self.proc.stdin.flush()
        return float(self.expect("done").split()[1])

    def finish(self, work: Path) -> tuple[dict, dict]:
        self.proc.stdin.write("finish\n")
        self.proc.stdin.close()
        rc = self.proc.wait()
        self.err.close()
        if rc != 0:
            raise SystemExit(f"mode {self.mode} failed (exit {rc}):\n{self.log.read_text(encoding='utf-8')[-3000:]}")
        out = work / "out"
        rec = json.loads((out / f"{self.mode}.json").read_text(encoding="utf-8"))
        with np.load(out / f"{self.mode}.npz") as z:
            return rec, {k: z[k] for k in z.files}


def _imgutils_env(work: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "PYTHONPATH"))}
    env.update(
        HF_ENDPOINT=url,  # the loopback stand-in only
        HF_HOME=str(work / "hf"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_XET="1",
        ONNX_MODE="cpu",
    )
    return env


def _has_imgutils(python: str) -> bool:
    r = subprocess.run([python, "-c", "import imgutils.tagging"], capture_output=True)
    return r.returncode == 0


def _summary(rec: dict, n: int) -> dict:
    runs = sorted(rec["runs"], key=lambda r: r["wall_s"])
    best = runs[0]  # the fastest pass: the one other work on the machine disturbed least
    return {
        "images_per_s": n / best["wall_s"],
        "wall_ms_per_image": 1000 * best["wall_s"] / n,
        "cpu_ms_per_image": 1000 * best["cpu_s"] / n,
        "model_ms_per_image": 1000 * best["model_s"] / n,
        "model_waits_share": 1.0 - best["model_s"] / best["wall_s"],
        "peak_rss_mib": rec["rss_peak_mib"],
        "rss_ready_mib": rec["rss_ready_mib"],
        "walls_s": [r["wall_s"] for r in rec["runs"]],
        "slowest_pass_vs_fastest": runs[-1]["wall_s"] / best["wall_s"],
        "stages_ms_per_image": {k: 1000 * v / n for k, v in best.get("stages_s", {}).items()} or None,
    }


def _fast_decode_deviation(normal: tuple[dict, dict], fast: tuple[dict, dict], records: list[dict]) -> dict:
    (rn, an), (rf, af) = normal, fast
    diff = np.abs(af["probs"].astype(np.float64) - an["probs"].astype(np.float64))
    n = len(records)
    affected = np.array([r["format"] == "JPEG" and max(r["size"]) > 2 * MODEL_SIZE for r in records])
    band_changed = np.array([a["band"] != b["band"] for a, b in zip(rn["per_image"], rf["per_image"])])
    tags_changed = (an["kept"] != af["kept"]).any(axis=1)
    flips = (an["kept"] != af["kept"]).sum(axis=1)
    dens_n = np.array([p["edge_density"] for p in rn["per_image"]])
    dens_f = np.array([p["edge_density"] for p in rf["per_image"]])
    same_band = ~band_changed
    return {
        "images": n,
        "images_decoded_smaller": int(affected.sum()),
        "score_abs_diff_max": float(diff.max()),
        "score_abs_diff_mean": float(diff.mean()),
        "score_abs_diff_mean_on_smaller": float(diff[affected].mean()) if affected.any() else 0.0,
        "band_changed_share": float(band_changed.mean()),
        "band_changed": [
            f"{records[i]['name']}: {rn['per_image'][i]['band']} -> {rf['per_image'][i]['band']}"
            for i in np.flatnonzero(band_changed)
        ],
        "tag_set_changed_share": float(tags_changed.mean()),
        "tag_set_changed_share_same_band": float(tags_changed[same_band].mean()) if same_band.any() else 0.0,
        "tags_added_or_dropped_mean": float(flips.mean()),
        "tags_added_or_dropped_mean_same_band": float(flips[same_band].mean()) if same_band.any() else 0.0,
        "tags_per_image_mean": float(an["kept"].sum(axis=1).mean()),
        "edge_density_ratio_on_smaller_mean": float((dens_f[affected] / np.maximum(dens_n[affected], 1e-9)).mean())
        if affected.any()
        else 1.0,
    }


def _placeholder_command(argv: list[str]) -> str:
    """This run's command line with machine-specific paths replaced by placeholders."""
    out, it = ["python", "bench/tag_throughput.py"], iter(argv)
    for a in it:
        key, eq, value = a.partition("=")
        if key not in ("--imgutils-python", "--work", "--json-out"):
            out.append(a)
            continue
        value = value if eq else next(it, "")
        if key == "--imgutils-python":
            value = "<imgutils-venv>/bin/python"
        elif key == "--work":
            value = "<work>"
        elif Path(value).is_absolute():
            value = "<json-out>"
        out += [key, value]
    return " ".join(out)


def peer_main(args, argv: list[str]) -> int:
    load_before = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files_dir = work / _files_dir_name(args)
    records = make_mixed_files(files_dir, args.files, args.seed)
    meta = ensure_model(work / "model", files_dir, records)
    n = len(records)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    imgutils_python = args.imgutils_python
    if imgutils_python is None and _has_imgutils(sys.executable):
        imgutils_python = sys.executable
    notes = []
    if "imgutils" in modes and not imgutils_python:
        modes.remove("imgutils")
        notes.append("imgutils not run: it is not importable here; pass --imgutils-python <venv>/bin/python")
    outs: dict[str, tuple[dict, dict]] = {}
    print(f"{n} files in {files_dir}; model {work / 'model'}; {args.repeats} rounds", file=sys.stderr)
    (work / "out").mkdir(exist_ok=True)
    model_dir = work / "model"
    hub_files = {
        (IMGUTILS_EMB_REPO, f"{IMGUTILS_TAG_REPO}/model.onnx"): (model_dir / "model.onnx").read_bytes(),
        (IMGUTILS_TAG_REPO, "selected_tags.csv"): (model_dir / "selected_tags.csv").read_bytes(),
    }
    # Every mode's process is started and warmed up first; then each round runs one pass of every mode,
    # one process at a time (the others wait on stdin), in a rotating order, so that a slow spell on a
    # shared machine falls on all modes alike and the per-round ratios pair passes run close in time.
    rounds: list[dict[str, float]] = []
    children: dict[str, _Child] = {}
    with _hub_server_class()(hub_files) as hub:
        try:
            for mode in modes:
                python = imgutils_python if mode == "imgutils" else sys.executable
                env = _imgutils_env(work, hub.url) if mode == "imgutils" else None
                children[mode] = _Child(mode, _child_command(mode, args, python), env, work / "out" / f"{mode}.log")
            for child in children.values():
                child.expect("ready")
            for r in range(max(1, args.repeats)):
                order = modes[r % len(modes) :] + modes[: r % len(modes)]
                rounds.append({m: children[m].run_pass() for m in order})
                print(f"  round {r + 1}: " + ", ".join(f"{m} {rounds[-1][m]:.2f} s" for m in modes), file=sys.stderr)
            for mode, child in children.items():
                outs[mode] = child.finish(work)
        finally:
            for child in children.values():
                if child.proc.poll() is None:  # only on an error: the processes this run started
                    child.proc.kill()
                    child.proc.wait()

    rows = {m: _summary(outs[m][0], n) for m in modes}
    base = rows.get("imgutils")
    for m, s in rows.items():
        s["vs_imgutils"] = s["images_per_s"] / base["images_per_s"] if base else None
        if base:  # paired: imgutils' wall over this mode's, in each round
            s["vs_imgutils_per_round"] = [rd["imgutils"] / rd[m] for rd in rounds]
            s["vs_imgutils_median_of_rounds"] = float(np.median(s["vs_imgutils_per_round"]))
        s["vs_naive"] = s["images_per_s"] / rows["naive"]["images_per_s"] if "naive" in rows else None

    checks = {}
    if "naive" in outs and "tagloop" in outs:
        checks["naive_vs_tagloop_score_abs_diff_max"] = float(
            np.abs(outs["naive"][1]["probs"] - outs["tagloop"][1]["probs"]).max()
        )
    for other in ("tagloop", "naive"):
        if "imgutils" in outs and other in outs:
            d = np.abs(outs["imgutils"][1]["probs"] - outs[other][1]["probs"]).max(axis=1)
            checks[f"imgutils_vs_{other}_score_abs_diff_max"] = float(d.max())
            checks[f"imgutils_vs_{other}_score_abs_diff_max_rgb"] = float(
                max((d[i] for i, r in enumerate(records) if not r["alpha"]), default=0.0)
            )
            break
    deviation = (
        _fast_decode_deviation(outs["tagloop"], outs["tagloop-fast"], records)
        if {"tagloop", "tagloop-fast"} <= set(outs)
        else None
    )

    jpeg = sum(r["format"] == "JPEG" for r in records)
    sides = [max(r["size"]) for r in records]
    print(
        f"\n{n} files ({jpeg} JPEG, {n - jpeg} PNG, {sum(r['alpha'] for r in records)} with alpha), long side "
        f"{min(sides)}-{max(sides)} px; tiny WD14 ONNX graph, {meta['labels']} labels, {MODEL_SIZE}x{MODEL_SIZE}, CPU; "
        f"fastest of {args.repeats} passes"
    )
    head = f"{'mode':<46} {'img/s':>7} {'wall ms':>8} {'CPU ms':>7} {'model ms':>8} {'waits':>6} {'peak MiB':>8}"
    print(head + f" {'vs imgutils':>11} {'paired':>7}")
    for m, s in rows.items():
        vs = f"{s['vs_imgutils']:.2f}x" if s["vs_imgutils"] else "-"
        paired = f"{s['vs_imgutils_median_of_rounds']:.2f}x" if s["vs_imgutils"] else "-"
        print(
            f"{_mode_label(m, args.batch_size, args.workers):<46} {s['images_per_s']:>7.2f} {s['wall_ms_per_image']:>8.1f} "
            f"{s['cpu_ms_per_image']:>7.1f} {s['model_ms_per_image']:>8.1f} {s['model_waits_share']:>6.0%} "
            f"{s['peak_rss_mib']:>8.0f} {vs:>11} {paired:>7}"
        )
    print("(vs imgutils: ratio of the fastest passes; paired: median over rounds of imgutils' wall / this mode's)")
    for m, s in rows.items():
        if s["stages_ms_per_image"]:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in s["stages_ms_per_image"].items())
            print(f"{m} stages, wall ms per image (fastest pass): {stages}")
    for note in notes:
        print(note)
    if checks:
        print("consistency: " + ", ".join(f"{k} {v:.2e}" for k, v in checks.items()))
    if deviation:
        d = deviation
        print(
            f"fast decode vs normal: {d['images_decoded_smaller']}/{n} images decoded smaller; |score diff| max "
            f"{d['score_abs_diff_max']:.4f}, mean {d['score_abs_diff_mean']:.5f} (on those {d['score_abs_diff_mean_on_smaller']:.5f}); "
            f"band changed {d['band_changed_share']:.0%}; tag set changed {d['tag_set_changed_share']:.0%} "
            f"({d['tags_added_or_dropped_mean']:.1f} of {d['tags_per_image_mean']:.1f} tags added or dropped per image; "
            f"same band: {d['tag_set_changed_share_same_band']:.0%}, {d['tags_added_or_dropped_mean_same_band']:.1f}); "
            f"edge density x{d['edge_density_ratio_on_smaller_mean']:.2f} on the smaller decodes"
        )
    if base and "tagloop" in rows:
        t, p = rows["tagloop"]["vs_imgutils"], rows["tagloop"]["vs_imgutils_median_of_rounds"]
        print(f"target >= 2x imgutils: tagloop {t:.2f}x (paired {p:.2f}x) -> {'met' if min(t, p) >= 2 else 'NOT met'}")

    record = {
        "benchmark": "peer comparison on the CPU",
        "command": _placeholder_command(argv),
        "files": {
            "count": n,
            "jpeg": jpeg,
            "png": n - jpeg,
            "alpha": sum(r["alpha"] for r in records),
            "sizes": [r["size"] for r in records],
            "seed": args.seed,
        },
        "model": {"kind": "tiny WD14-layout ONNX (tagloop.testing.save_tiny_wd14_onnx, with_embedding=True)", **meta},
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "modes": {m: {"label": _mode_label(m, args.batch_size, args.workers), **rows[m]} for m in modes},
        "imgutils": {k: outs["imgutils"][0][k] for k in ("versions", "providers")} if "imgutils" in outs else None,
        "tagloop_tagger": outs["tagloop"][0]["tagger"] if "tagloop" in outs else None,
        "consistency": checks,
        "fast_decode_deviation": deviation,
        "target_2x_imgutils_met": (
            min(rows["tagloop"]["vs_imgutils"], rows["tagloop"]["vs_imgutils_median_of_rounds"]) >= 2
            if base and "tagloop" in rows
            else None
        ),
        "rounds_wall_s": rounds,
        "notes": notes,
        "machine": {**_machine(), "load_average_before": load_before},
    }
    Path(args.json_out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json_out}")
    return 0


def _machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        info["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    for mod in ("onnxruntime", "cv2"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    info["numpy"], info["pillow"] = np.__version__, Image.__version__
    return info


# --- single model, both loops in one process (--model) ------------------------------------------


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Noisy JPEGs with shapes, about the cost of Danbooru-size art to decode."""
    rng = np.random.default_rng(seed)
    paths = []
    w, h = size
    for i in range(n):
        base = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).copy()
        arr[rng.integers(0, h, 2000), rng.integers(0, w, 2000)] = 255
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def build_model(kind: str, folder: Path, device: str, dtype: str):
    from tagloop.tagger.base import LoadOptions, load_tagger

    opts = LoadOptions(device=device, dtype=dtype)
    if kind in ("dd-full", "dd-tiny"):
        from tagloop.tagger.deepdanbooru import DeepDanbooruWidths
        from tagloop.testing import save_tiny_deepdanbooru

        if kind == "dd-full":
            path, _ = save_tiny_deepdanbooru(
                folder / "model-resnet_custom_v3.safetensors", num_tags=9176, widths=DeepDanbooruWidths.full()
            )
        else:
            path, _ = save_tiny_deepdanbooru(folder / "tiny.safetensors", num_tags=64)
        return load_tagger(path, opts)
    if kind in WD_TIMM:
        from tagloop.testing import save_tiny_wd_v3_timm

        arch, args = WD_TIMM[kind]
        out = save_tiny_wd_v3_timm(
            folder / kind, architecture=arch, model_args=args, img_size=448, num_general=9000, num_character=1000
        )
        return load_tagger(out, opts, backend="wd-timm")
    raise SystemExit(f"unknown --model {kind!r}; choose dd-full, dd-tiny or one of {', '.join(WD_TIMM)}")


def naive(tagger, paths, options) -> float:
    """One image at a time, decode then forward, no overlap: A1111's interrogate loop."""
    from tagloop.tagger.preprocess import load_image
    from tagloop.tagger.run import build_result
    from tagloop.tagger.threshold import edge_density

    t0 = time.perf_counter()
    for p in paths:
        img = load_image(p)
        d = edge_density(img)
        x = tagger.preprocess(img)[None]
        probs = tagger.predict(x)
        build_result(tagger, str(p), probs[0], d, options)
    _sync(tagger)
    return time.perf_counter() - t0


def batched(tagger, paths, options) -> float:
    from tagloop.tagger.run import tag_sources

    t0 = time.perf_counter()
    n = sum(1 for _ in tag_sources(tagger, [str(p) for p in paths], options))
    assert n == len(paths)
    _sync(tagger)
    return time.perf_counter() - t0


def _sync(tagger) -> None:
    if str(getattr(tagger, "device", "cpu")).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def single_model_main(args) -> int:
    from tagloop.tagger.run import TagOptions

    w, h = (int(v) for v in args.image_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="tagloop-bench-") as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp, args.images, (w, h))
        t_load = time.perf_counter()
        tagger = build_model(args.model, tmp, args.device, args.dtype)
        t_load = time.perf_counter() - t_load
        options = TagOptions(batch_size=args.batch_size, workers=args.workers)
        warm = paths[: min(len(paths), args.batch_size * max(0, args.warmup))]
        if warm:
            batched(tagger, warm, options)
            naive(tagger, warm[:2], options)
        t_naive = naive(tagger, paths, options)
        t_batched = batched(tagger, paths, options)
        desc = tagger.describe()
        tagger.close()

    n = len(paths)
    rows = [
        ("naive (1 image at a time)", t_naive, n / t_naive),
        (f"tagloop batched (bs {args.batch_size}, {args.workers} decode threads)", t_batched, n / t_batched),
    ]
    print(f"\nmodel: {args.model} ({desc}); {n} JPEGs of {w}x{h}; load/build {t_load:.1f} s")
    print(f"{'mode':<52} {'seconds':>9} {'images/s':>10}")
    for name, t, ips in rows:
        print(f"{name:<52} {t:>9.2f} {ips:>10.2f}")
    print(f"{'speed-up':<52} {'':>9} {t_naive / t_batched:>9.2f}x")

    record = {
        "model": args.model,
        "tagger": desc,
        "device": args.device,
        "dtype": args.dtype,
        "images": n,
        "image_size": [w, h],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "naive_images_per_s": n / t_naive,
        "batched_images_per_s": n / t_batched,
        "speedup": t_naive / t_batched,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    try:
        import torch

        record["machine"]["torch"] = torch.__version__
        if torch.cuda.is_available():
            record["machine"]["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    Path(args.json_out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=48, help="peer comparison: number of generated JPEG/PNG files")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated files")
    ap.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "tagloop-tag-throughput"),
        help="folder for the files, the model, the hub cache and per-mode outputs (kept for reruns)",
    )
    ap.add_argument("--imgutils-python", help="python of a virtual environment with dghs-imgutils and onnxruntime")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--repeats", type=int, default=5, help="rounds: timed passes per mode (the fastest is reported)")
    ap.add_argument("--only", choices=MODES, help=argparse.SUPPRESS)  # a child process: run one mode
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # ... one pass per stdin line
    ap.add_argument("--model", help="single-model mode: dd-full, dd-tiny, " + ", ".join(WD_TIMM))
    ap.add_argument("--device", default="cpu", help="single-model mode")
    ap.add_argument("--dtype", default="auto", help="single-model mode")
    ap.add_argument("--images", type=int, default=8, help="single-model mode: number of synthetic JPEGs")
    ap.add_argument("--image-size", default="768x1024", help="single-model mode: WxH of the synthetic JPEGs")
    ap.add_argument("--batch-size", type=int, help="default 16 (peer comparison), 8 (--model)")
    ap.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--warmup", type=int, default=1, help="single-model mode: batches run before timing")
    ap.add_argument("--json-out", default=str(Path(__file__).with_name("tag_throughput.json")))
    args = ap.parse_args(argv)
    if args.only:
        return child_main(args)
    if args.model:
        args.batch_size = args.batch_size or 8
        return single_model_main(args)
    args.batch_size = args.batch_size or 16
    return peer_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
