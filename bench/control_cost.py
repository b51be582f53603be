"""Extra seconds per image that ControlNet costs: the same request without control, with one and two units.

Default: tiny SD1 model and tiny ControlNets on CPU (no download). With a GPU: ``--full`` builds the
full-size SD1.5 architecture (bench/generate_throughput.py's builder, packaged configs) and a full-size
ControlNet (``ControlNetModel.from_unet``) with random weights, so the figures measure the real cost.

    python bench/control_cost.py                                   # tiny, CPU
    python bench/control_cost.py --full --device cuda --steps 20 --size 512

Prints a table and writes JSON (``--json-out``, default bench/control_cost.json).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from tagloop.generator.control import ControlUnit
    from tagloop.generator.generate import GenerationSettings, Generator
    from tagloop.testing import diffusion as tiny
    from tagloop.testing.control import save_tiny_controlnet

    work = Path(tempfile.mkdtemp(prefix="tagloop-bench-control-"))
    if args.full:
        from diffusers import ControlNetModel, UNet2DConditionModel
        from generate_throughput import build_full

        folder = build_full("sd15", work / "sd", "fp16" if args.device == "cuda" else "fp32")
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
        ControlNetModel.from_unet(unet).save_pretrained(work / "cn", safe_serialization=True)
        cn = [work / "cn", work / "cn"]
        size = args.size or 512
    else:
        pipe = tiny.save_tiny_diffusers("sd1", work / "sd")
        folder = work / "sd"
        save_tiny_controlnet(pipe.unet, folder=work / "cn0", seed=1)
        save_tiny_controlnet(pipe.unet, folder=work / "cn1", seed=2)
        cn = [work / "cn0", work / "cn1"]
        size = args.size or 64
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(size, size, 3) * 255).astype(np.uint8)).save(work / "src.png")
    gen = Generator(folder, device=args.device, progress=False)
    base = GenerationSettings(
        prompt="1girl, silver hair", seed=1, steps=args.steps, width=size, height=size, sampler="Euler",
        batch_size=args.batch,
    )  # fmt: skip
    cases = {
        "none": [],
        "1 unit": [ControlUnit(image=work / "src.png", model=cn[0])],
        "2 units": [ControlUnit(image=work / "src.png", model=cn[0]), ControlUnit(image=work / "src.png", model=cn[1])],
    }
    rows = {}
    for name, units in cases.items():
        import dataclasses

        s = dataclasses.replace(base, control=units)
        gen.generate(s)  # warm-up: loads, pipelines built
        times = []
        for _ in range(args.repeat):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen.generate(s)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows[name] = {"seconds_per_image": min(times) / args.batch, "all": times}
    none = rows["none"]["seconds_per_image"]
    for r in rows.values():
        r["extra_seconds_per_image"] = r["seconds_per_image"] - none
        r["ratio"] = r["seconds_per_image"] / none if none else None
    return {
        "bench": "control_cost",
        "full": bool(args.full),
        "device": args.device,
        "steps": args.steps,
        "size": size,
        "batch": args.batch,
        "repeat": args.repeat,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full-size SD1.5 UNet + ControlNet (random weights; for a GPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-out", default=str(Path(__file__).resolve().parent / "control_cost.json"))
    args = ap.parse_args()
    result = run(args)
    print(f"{'case':<10} {'s/image':>10} {'extra s/image':>14} {'ratio':>7}")
    for name, r in result["rows"].items():
        print(f"{name:<10} {r['seconds_per_image']:>10.4f} {r['extra_seconds_per_image']:>14.4f} {r['ratio']:>7.2f}")
    Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
