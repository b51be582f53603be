"""Seconds per source of the loop (`tagloop reproduce`) by stage, against the same steps run by hand with the CLI.

The loop: one process holds the tagger and the generator and, per source, tags it, composes a prompt,
tags altered copies of the source (the ceiling calibration), generates ``--variants`` images a round,
tags them again, scores them and runs ``--refine`` more rounds (``Reproducer.run_many``). Its stage
times come from each source's ``report.json`` ``timings``.

The naive way, what a user does by hand: one process per stage per source,

    tagloop tag SRC --model DD --format json --device D > tags.json
    tagloop prompt --from-json tags.json --format json --tokenizer estimate > prompt.json
    tagloop generate --model SD --from-json prompt.json --batch-size 4 --steps N --size WxH --sampler S \\
        --seed K --device D --out DIR -q
    tagloop tag DIR --model DD --format json --device D > retag.json

It loads both models again in every process and gives no scores, no calibration and no refinement:
the loop does strictly more work. Weights are random (a network's speed does not depend on its
weights); the pictures are tagloop's drawn demo source with varied seeds.

    python bench/reproduce.py                                 # tiny demo models on the CPU, 3 sources
    python bench/reproduce.py --full --device cuda --sources 4  # full-size SD1.5 + DeepDanbooru v3, 512x512, 20 steps
    python bench/reproduce.py --full --dry-build              # full-size architectures on the meta device only
    python bench/reproduce.py --full --device cpu --steps 1 --size 64x64 --sources 1 --variants 2  # CPU smoke of --full

``--full`` writes the random-weight models first (SD1.5 as a diffusers folder from the packaged configs,
about 2.1 GB in fp16; DeepDanbooru v3 with 9,176 tags, 640 MB); ``--work-dir`` keeps them for the next run.

Prints a table and writes JSON (``--json-out``, default bench/reproduce.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("tag", "compose", "calibrate", "generate", "retag")
#: The naive way's processes, by the loop stage each stands for.
NAIVE_STAGES = ("tag", "compose", "generate", "retag")
#: Tags above 0.5 per picture that the full-size random DeepDanbooru is shifted to (a trained one gives 20-40).
FULL_TARGET_TAGS = 30


def make_sources(folder: Path, n: int, size: int = 256) -> list[Path]:
    """The demo's drawn source picture with ``n`` different seeds, as PNGs."""
    from tagloop.pipeline.demo import draw_source_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"source-{i:02d}.png"
        draw_source_image(size=size, seed=7 + 11 * i).save(p)
        paths.append(p)
    return paths


# --- full-size models with random weights ----------------------------------------------------------


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_full_sd15(folder: Path, dtype_name: str, dry: bool = False) -> dict:
    """A diffusers folder of SD1.5's architecture (packaged configs) with random weights; ``dry``: meta device, nothing saved."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tagloop.generator.locate import packaged_config_dir

    cfg = packaged_config_dir("sd1")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]

    def make():
        torch.manual_seed(0)
        return {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")),
        }

    if dry:
        from accelerate import init_empty_weights

        with init_empty_weights():
            parts = make()
        return {k: _count(m) for k, m in parts.items()}
    parts = {k: m.to(dtype) for k, m in make().items()}
    counts = {k: _count(m) for k, m in parts.items()}
    pipe = StableDiffusionPipeline(
        **parts,
        tokenizer=CLIPTokenizer.from_pretrained(cfg / "tokenizer"),
        scheduler=PNDMScheduler.from_pretrained(cfg / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return counts


def build_full_deepdanbooru(path: Path, sources: list[Path], num_tags: int, dry: bool = False) -> dict:
    """DeepDanbooru v3 at the released widths with random weights, its head shifted so ~30 tags pass 0.5.

    ``make_random_state_dict`` spreads each tag's logit around -1, so about 16% of 9,176 tags (some
    1,500) would pass a 0.5 threshold on every picture; a trained model gives 20-40, and the composer
    and the scores would then work on a list no real model returns. One rank-1 change of the head
    along the sources' mean feature vector moves every logit down by the same amount (no bias in
    the real head), measured on the benchmark's own sources at the model's input size.
    """
    import torch

    from tagloop.tagger.deepdanbooru import (
        DEFAULT_INPUT_SIZE,
        HEAD_INDEX,
        DeepDanbooruWidths,
        build_net,
        save_deepdanbooru_safetensors,
    )

    widths = DeepDanbooruWidths.full(num_tags)
    if dry:
        return {"deepdanbooru": sum(int(torch.Size(s).numel()) for s in widths.expected_shapes().values()), "tags": num_tags}
    import numpy as np
    from PIL import Image

    from tagloop.tagger.preprocess import deepdanbooru_a1111
    from tagloop.testing.taggers import make_random_state_dict, tiny_tag_names

    sd = make_random_state_dict(widths, seed=0)
    net = build_net(sd)
    batch = np.stack([deepdanbooru_a1111(Image.open(p).convert("RGB"), DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE) for p in sources])
    key = f"n_Conv_{HEAD_INDEX}.weight"
    with torch.no_grad():
        pooled = net.features(torch.from_numpy(batch).float().div_(255)).double().mean(dim=(2, 3))  # (N, C)
        weight = sd[key].double()[:, :, 0, 0]
        logits = pooled @ weight.T  # (N, T)
        shift = -float(torch.quantile(logits.flatten(), 1.0 - FULL_TARGET_TAGS / num_tags))
        mu = pooled.mean(dim=0)
        weight = weight + shift * mu[None, :] / float(mu @ mu)
        passed = float(((pooled @ weight.T) > 0).sum(dim=1).double().mean())
    sd[key] = weight[:, :, None, None].float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_deepdanbooru_safetensors(sd, tiny_tag_names(num_tags), path)
    return {"deepdanbooru": sum(v.numel() for v in sd.values()), "tags": num_tags, "head_shift": shift, "tags_above_half": passed}


# --- the two ways ----------------------------------------------------------------------------------


def run_loop(args, dd: Path, sd: Path, sources: list[Path], out: Path) -> dict:
    from tagloop.api import load_tagger
    from tagloop.generator.generate import Generator
    from tagloop.generator.settings import GenerationSettings
    from tagloop.pipeline.reproduce import Reproducer, ReproduceSettings
    from tagloop.prompt import PromptSettings

    t0 = time.perf_counter()
    tagger = load_tagger(str(dd), device=args.device, dtype=args.dtype)
    gen = Generator(str(sd), device=args.device, dtype=args.dtype, progress=False, notice=lambda m: None)
    gen.load()  # weights load on the first generate otherwise: count them here, with the tagger's
    rep = Reproducer(
        tagger,
        gen,
        prompt_settings=PromptSettings(tokenizer="estimate"),
        generation=GenerationSettings(steps=args.steps, width=args.width, height=args.height, sampler=args.sampler),
        settings=ReproduceSettings(variants=args.variants, refine=args.refine, seed=args.seed),
    )
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = rep.run_many([str(s) for s in sources], out)
    wall = time.perf_counter() - t0
    per_source = []
    for r in results:
        t = r.report.get("timings", {})
        per_source.append(
            {
                "source": Path(r.source).name,
                "status": r.status,
                "rounds": len(r.rounds),
                "images_generated": len(r.variants),
                "prompt": (r.report.get("prompt") or {}).get("positive"),
                "prompt_tags": len([p for p in (r.report.get("prompt") or {}).get("parts", []) if p.get("kind") == "tag"]),
                "best_f1": max((v.f1 for v in r.variants if v.f1 is not None), default=None),
                # refinement, on the score it optimises: each round's mean F1 and the first round's best variant
                "round_mean_f1": [((x.get("mean") or {}).get("tagger") or {}).get("f1") for x in r.rounds],
                "round0_best_f1": max((v.f1 for v in r.variants if v.round == 0 and v.f1 is not None), default=None),
                "timings": {k: float(v) for k, v in t.items()},
            }
        )
    if len(per_source) != len(sources):
        raise SystemExit(f"the loop finished {len(per_source)} of {len(sources)} sources")
    return {"load_s": load_s, "wall_s": wall, "sources": per_source, "tagger": tagger.describe()}


def cold_start(args, dd: Path, sd: Path) -> float:
    """Seconds a fresh ``tagloop reproduce`` process pays once: interpreter, imports, both models loaded."""
    code = (
        "from tagloop.api import load_tagger\n"
        "from tagloop.generator.generate import Generator\n"
        "import tagloop.pipeline.reproduce\n"
        f"load_tagger({str(dd)!r}, device={args.device!r}, dtype={args.dtype!r})\n"
        f"Generator({str(sd)!r}, device={args.device!r}, dtype={args.dtype!r}, progress=False, notice=lambda m: None).load()\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"cold start failed: {proc.stderr.decode(errors='replace')}")
    return time.perf_counter() - t0


def run_naive(args, dd: Path, sd: Path, sources: list[Path], out: Path) -> dict:
    """One process per stage per source, as a user chains the commands by hand."""
    exe = [sys.executable, "-m", "tagloop"]
    dtype = [] if args.dtype == "auto" else ["--dtype", args.dtype]
    per_source = []
    for src in sources:
        d = out / src.stem
        d.mkdir(parents=True, exist_ok=True)
        tags, prompt, images = d / "tags.json", d / "prompt.json", d / "variants"
        steps = [
            ("tag", [*exe, "tag", str(src), "--model", str(dd), "--format", "json", "--device", args.device, *dtype], tags),
            ("compose", [*exe, "prompt", "--from-json", str(tags), "--format", "json", "--tokenizer", "estimate"], prompt),
            (
                "generate",
                [
                    *exe,
                    "generate",
                    "--model",
                    str(sd),
                    "--from-json",
                    str(prompt),
                    "--batch-size",
                    str(args.variants),
                    "--steps",
                    str(args.steps),
                    "--size",
                    f"{args.width}x{args.height}",
                    "--sampler",
                    args.sampler,
                    "--seed",
                    str(args.seed),
                    "--device",
                    args.device,
                    *dtype,
                    "--out",
                    str(images),
                    "-q",
                ],
                None,
            ),
            (
                "retag",
                [*exe, "tag", str(images), "--model", str(dd), "--format", "json", "--device", args.device, *dtype],
                d / "retag.json",
            ),
        ]
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        for stage, cmd, stdout in steps:
            t0 = time.perf_counter()
            with open(stdout, "wb") if stdout is not None else open(os.devnull, "wb") as fh:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.PIPE)
            timings[stage] = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(
                    f"naive {stage} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')}"
                )
        timings["total"] = time.perf_counter() - t_all
        n_images = len(list(images.glob("*.png")))
        per_source.append({"source": src.name, "images_generated": n_images, "timings": timings})
    return {"sources": per_source}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def summarise(loop: dict, naive: dict | None) -> dict:
    n = len(loop["sources"])
    lp = {k: _mean(s["timings"].get(k, 0.0) for s in loop["sources"]) for k in (*STAGES, "total")}
    lp["other"] = lp["total"] - sum(lp[k] for k in STAGES)  # decode, scoring, refinement, files
    lp["load_share"] = loop["load_s"] / n
    lp["cold_start_share"] = loop["cold_start_s"] / n
    # what a user of `tagloop reproduce` waits per source: one process start (imports + load) shared by all sources
    lp["per_source"] = (loop["cold_start_s"] + loop["wall_s"]) / n
    out = {"loop": lp}
    if naive is not None:
        nv = {k: _mean(s["timings"][k] for s in naive["sources"]) for k in (*NAIVE_STAGES, "total")}
        out["naive"] = nv
        out["speedup"] = nv["total"] / lp["per_source"]
        out["speedup_without_load"] = nv["total"] / lp["total"]
    return out


def print_table(res: dict) -> None:
    s, lp, nv = res["summary"], res["summary"]["loop"], res["summary"].get("naive")
    imgs_loop = _mean(x["images_generated"] for x in res["loop"]["sources"])
    rounds = _mean(x["rounds"] for x in res["loop"]["sources"])
    print(
        f"\n{res['mode']}: {res['sources']} sources, {res['variants']} variants, refine {res['refine']}, {res['size']}, "
        f"{res['steps']} steps, {res['sampler']}, device {res['device']}"
    )
    print(f"{'stage (s per source, mean)':<34}{'loop':>10}{'naive':>10}   naive step")
    naive_cmd = {
        "tag": "tagloop tag SRC",
        "compose": "tagloop prompt --from-json",
        "calibrate": "(not done)",
        "generate": "tagloop generate",
        "retag": "tagloop tag DIR",
    }
    print(f"{'start-up: imports + load, / sources':<34}{lp['cold_start_share']:>10.3f}{'-':>10}   (inside every process)")
    for k in STAGES:
        v = f"{nv[k]:>10.3f}" if nv and k in nv else f"{'-':>10}"
        print(f"{k:<34}{lp[k]:>10.3f}{v}   {naive_cmd[k]}")
    print(f"{'other (decode, score, refine, files)':<34}{lp['other']:>10.3f}{'-':>10}")
    print(f"{'total (report timings)':<34}{lp['total']:>10.3f}{(nv['total'] if nv else float('nan')):>10.3f}")
    print(f"{'per source incl. start-up share':<34}{lp['per_source']:>10.3f}{(nv['total'] if nv else float('nan')):>10.3f}")
    imgs_naive = _mean(x["images_generated"] for x in res["naive"]["sources"]) if nv else float("nan")
    print(f"{'images generated per source':<34}{imgs_loop:>10.1f}{imgs_naive:>10.1f}   (loop: {rounds:.1f} rounds)")
    if nv:
        print(f"{'speed-up (naive / loop + start-up)':<34}{'':>10}{s['speedup']:>9.2f}x")
        print(f"{'speed-up (naive / loop, no start)':<34}{'':>10}{s['speedup_without_load']:>9.2f}x")
        same = all(x.get("same_prompt_as_loop") for x in res["naive"]["sources"])
        print(f"same first prompt in both ways: {'yes' if same else 'NO'}")
        print("the naive way gives no scores, no calibration and no refinement: the loop does strictly more work")
    print("refinement (tagger F1, random weights: mechanics, not quality):")
    for x in res["loop"]["sources"]:
        means = " -> ".join("-" if m is None else f"{m:.3f}" for m in x.get("round_mean_f1", []))
        print(
            f"  {x['source']:<16} mean F1 by round {means}; best variant {x['best_f1']:.3f} vs round 0's {x['round0_best_f1']:.3f}"
        )


def machine() -> dict:
    m = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        m["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    m["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    try:
        import torch

        m["torch"] = torch.__version__
        m["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            m["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return m


def _commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), to tie the figures to the code."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full-size SD1.5 + DeepDanbooru v3 (random weights); for a GPU")
    ap.add_argument(
        "--dry-build", action="store_true", help="with --full: build the architectures on the meta device, print, exit"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="tagger and generator dtype (auto: fp16/bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--sources", type=int, default=3)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--refine", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="default 4 (tiny) or 20 (--full)")
    ap.add_argument("--size", default=None, help="WxH, default 64x64 (tiny) or 512x512 (--full)")
    ap.add_argument("--sampler", default="Euler a")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--dd-tags", type=int, default=None, help="--full: DeepDanbooru tag count (default 9176, the v3 release)")
    ap.add_argument("--no-naive", action="store_true", help="time the loop only")
    ap.add_argument("--work-dir", default=None, help="keep models and outputs here (default: a temporary folder, removed)")
    ap.add_argument("--json-out", default=str(Path(__file__).with_name("reproduce.json")))
    args = ap.parse_args(argv)

    from tagloop.tagger.deepdanbooru import FULL_NUM_TAGS

    args.steps = args.steps or (20 if args.full else 4)
    args.size = args.size or ("512x512" if args.full else "64x64")
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    num_tags = args.dd_tags or FULL_NUM_TAGS

    if args.dry_build:
        if not args.full:
            raise SystemExit("--dry-build goes with --full (the tiny models build in seconds)")
        counts = {
            **build_full_sd15(Path("unused"), "fp16", dry=True),
            **build_full_deepdanbooru(Path("unused"), [], num_tags, dry=True),
        }
        print("full-size architectures (meta device, no weights):")
        for k, v in counts.items():
            print(f"  {k:<14}{v:>15,}")
        return 0

    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tagloop-bench-reproduce-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from tagloop.pipeline.demo import _quiet_loaders

        _quiet_loaders()
        sources = make_sources(work / "sources", args.sources)
        t0 = time.perf_counter()
        build: dict = {}
        if args.full:
            models = work / "models-full"
            dd, sd = models / "model-resnet_custom_v3.safetensors", models / "sd15-random"
            dtype = "fp32" if args.device == "cpu" else ("bf16" if args.dtype == "bf16" else "fp16")
            if not (sd / "model_index.json").is_file():
                build.update(build_full_sd15(sd, dtype))
            if not dd.is_file():
                build.update(build_full_deepdanbooru(dd, sources, num_tags))
        else:
            from tagloop.pipeline.demo import build_models

            dd, sd = build_models(work / "models")
        build["seconds"] = time.perf_counter() - t0
        print(f"models ready in {build['seconds']:.1f} s: {dd.name}, {sd.name}")

        for sub in ("loop", "naive"):
            shutil.rmtree(work / sub, ignore_errors=True)
        loop = run_loop(args, dd, sd, sources, work / "loop")
        loop["cold_start_s"] = cold_start(args, dd, sd)
        print(f"loop: {len(sources)} sources in {loop['wall_s']:.1f} s (+{loop['load_s']:.1f} s model load)")
        naive = None if args.no_naive else run_naive(args, dd, sd, sources, work / "naive")
        if naive is not None:  # both ways must have composed the same first prompt from the same tags
            for lsrc, nsrc in zip(loop["sources"], naive["sources"]):
                nprompt = json.loads((work / "naive" / Path(nsrc["source"]).stem / "prompt.json").read_text(encoding="utf-8"))
                nsrc["same_prompt_as_loop"] = nprompt.get("positive") == lsrc["prompt"]
        res = {
            "mode": "full-size SD1.5 + DeepDanbooru v3 (random weights)" if args.full else "tiny demo models (random weights)",
            "full": args.full,
            "device": args.device,
            "dtype": args.dtype,
            "sources": len(sources),
            "variants": args.variants,
            "refine": args.refine,
            "steps": args.steps,
            "size": args.size,
            "sampler": args.sampler,
            "seed": args.seed,
            "build": build,
            "loop": loop,
            "naive": naive,
            "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else None,
            "commit": _commit(),
            "machine": {**machine(), "loadavg_start": load_start},
        }
        res["summary"] = summarise(loop, naive)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print_table(res)
    Path(args.json_out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
