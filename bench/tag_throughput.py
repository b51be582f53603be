"""Bulk-tagging throughput: tagloop's batched runner vs the one-image-at-a-time loop (as A1111 does).

Both modes run in the same process on the same model and the same synthetic JPEGs (decode, EXIF,
edge density and preprocessing included, as a user's run does). Weights are random: the speed of a
network does not depend on its weights. Prints a table and writes JSON.

    python bench/tag_throughput.py                                   # CPU: full DeepDanbooru v3, 8 images
    python bench/tag_throughput.py --model dd-full --device cuda --dtype bf16 --images 512 --batch-size 64
    python bench/tag_throughput.py --model wd-vit-v3 --device cuda --images 512 --batch-size 64
    python bench/tag_throughput.py --model dd-tiny --images 64       # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dd-full", help="dd-full, dd-tiny, " + ", ".join(WD_TIMM))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--image-size", default="768x1024", help="WxH of the synthetic JPEGs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--warmup", type=int, default=1, help="batches run before timing (CUDA kernels, allocator)")
    ap.add_argument("--json-out", default=str(Path(__file__).with_name("tag_throughput.json")))
    args = ap.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
