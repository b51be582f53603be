"""Images/s for a list of prompts: batched forwards vs one pipeline call per prompt.

Default: tiny SD1 model on CPU (no download). With a GPU: ``--full sd15`` / ``--full sdxl`` builds the
full-size SD1.5 / SDXL architectures from tagloop's packaged configs with random weights (fp16, optional
``--compile``), so the figures measure the real UNet/VAE/CLIP cost without any checkpoint file.

    python bench/generate_throughput.py                       # tiny, CPU
    python bench/generate_throughput.py --full sd15 --device cuda --steps 20 --size 512
    python bench/generate_throughput.py --full sdxl --device cuda --steps 20 --size 1024 --compile

Prints a table and writes JSON (``--json-out``, default bench/generate_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "masterpiece, best quality, 1girl, silver hair, (red eyes:1.2), smile",
    "masterpiece, best quality, 1boy, black hair, school uniform, outdoors",
    "1girl, long hair, blue dress, night sky, stars, (detailed eyes:1.1)",
    "landscape, mountains, lake, sunset, no humans",
    "1girl, short hair, glasses, library, reading, indoors",
    "chibi, cat ears, hoodie, simple background",
    "1girl, kimono, cherry blossoms, festival, lantern",
    "mecha, robot, city, rain, neon lights",
]


def build_full(family: str, folder: Path, dtype_name: str) -> Path:
    """A diffusers folder of the full-size architecture with random weights (no download)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from tagloop.generator.models import packaged_config_dir

    cfg = packaged_config_dir("sd1" if family == "sd15" else "sdxl")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    torch.manual_seed(0)
    parts = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")).to(dtype),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")).to(dtype),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")).to(dtype),
        "tokenizer": CLIPTokenizer.from_pretrained(cfg / "tokenizer"),
    }
    if family == "sd15":
        from diffusers import PNDMScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            **parts,
            scheduler=PNDMScheduler.from_pretrained(cfg / "scheduler"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2")).to(dtype)
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(cfg / "tokenizer_2")
        pipe = StableDiffusionXLPipeline(**parts, scheduler=EulerDiscreteScheduler.from_pretrained(cfg / "scheduler"))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def run(args) -> dict:
    import torch

    from tagloop.generator.generate import GenerationSettings, Generator
    from tagloop.testing import diffusion as tiny

    torch.set_num_threads(args.threads) if args.threads else None
    work = Path(tempfile.mkdtemp(prefix="tagloop-bench-"))
    if args.full:
        model = build_full(args.full, work / args.full, args.dtype)
        size = args.size or (512 if args.full == "sd15" else 1024)
    else:
        tiny.save_tiny_diffusers("sd1", work / "tiny")
        model = work / "tiny"
        size = args.size or 64
    dtype = args.dtype if args.device != "cpu" else "fp32"
    g = Generator(model, device=args.device, dtype=dtype, compile=args.compile, progress=False, notice=lambda m: None)
    prompts = [
        (p, "lowres, bad anatomy") for p in (PROMPTS * ((args.prompts + len(PROMPTS) - 1) // len(PROMPTS)))[: args.prompts]
    ]
    common = dict(steps=args.steps, width=size, height=size, seed=1, sampler=args.sampler)
    # warm-up (compile, allocator, first-call caches)
    g.generate(GenerationSettings(prompts=prompts[: args.batch], max_batch=args.batch, **common))

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    rows = []
    for mode in ("one call per prompt", f"batched ({args.batch} per forward)"):
        sync()
        t = time.perf_counter()
        for _ in range(args.repeat):
            if mode.startswith("one"):
                for p in prompts:
                    g.generate(GenerationSettings(prompts=[p], max_batch=1, **common))
            else:
                g.generate(GenerationSettings(prompts=prompts, max_batch=args.batch, **common))
        sync()
        dt = time.perf_counter() - t
        n = len(prompts) * args.repeat
        rows.append({"mode": mode, "images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 3)})
    out = {
        "model": args.full or "tiny-sd1",
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(0),
        "dtype": dtype,
        "compile": args.compile,
        "size": size,
        "steps": args.steps,
        "sampler": args.sampler,
        "prompts": len(prompts),
        "batch": args.batch,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "results": rows,
        "speedup_batched": round(rows[1]["images_per_s"] / rows[0]["images_per_s"], 2),
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", choices=["sd15", "sdxl"], default=None, help="full-size architecture with random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--sampler", default="Euler a")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json-out", default=str(Path(__file__).with_name("generate_throughput.json")))
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 20 if args.full else 4
    res = run(args)
    print(
        f"{res['model']} on {res['device']} ({res['dtype']}{', compiled' if res['compile'] else ''}), "
        f"{res['size']}x{res['size']}, {res['steps']} steps, {res['prompts']} prompts"
    )
    print(f"{'mode':<28}{'images':>8}{'seconds':>10}{'img/s':>10}")
    for r in res["results"]:
        print(f"{r['mode']:<28}{r['images']:>8}{r['seconds']:>10.2f}{r['images_per_s']:>10.3f}")
    print(f"batched speed-up: x{res['speedup_batched']}")
    Path(args.json_out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
