"""Bulk tagging at scale: peak memory and time of `tagloop tag DIR -r --sidecar --out MANIFEST` as the
folder grows, the resume run (everything already done), and `tagloop retag` on the manifest.

Each run is a fresh process (`python -m tagloop ...`); its peak resident memory comes from the
kernel (`os.wait4`). The images are small generated JPEGs in folders of 1,000, and the tagger a tiny
WD14-layout ONNX model (`tagloop.testing.save_tiny_wd14_onnx`, 64x64 input), so what is timed is
tagloop's own host work: listing, decoding, edge density, preprocessing, captions and the manifest.
The naive way to compare with is a list of every result kept in memory: the `--format json`
run without a manifest over the same folder (it streams too, so both should stay flat).

    python bench/bulk_memory.py --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, n: int, per_folder: int = 1000, size: int = 64) -> None:
    rng = np.random.default_rng(n)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    made = 0
    while made < n:
        sub = folder / f"part{made // per_folder:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(min(per_folder, n - made)):
            tile = np.roll(base, (made + i) % 8, axis=(made + i) % 2)
            Image.fromarray(tile).resize((size, size), Image.BILINEAR).save(sub / f"{made + i:07d}.jpg", quality=85)
        made += min(per_folder, n - made)


#: A small process that starts tagloop and reports its peak memory: a child forked from this
#: benchmark (torch imported) would report this process's memory at the fork as its own peak.
_WRAPPER = (
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t, 'maxrss_kib': u.ru_maxrss, "
    "'cpu_s': u.ru_utime + u.ru_stime, 'err': r.stderr.decode('utf-8', 'replace')[-2000:]}))"
)


def run(args: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "tagloop", *args], env=env, capture_output=True, text=True
    )
    got = json.loads(out.stdout)
    if got["rc"] not in (0, 1):
        raise SystemExit(f"tagloop {' '.join(args)} failed:\n{got['err']}")
    return {
        "seconds": round(got["seconds"], 2),
        "peak_rss_mib": round(got["maxrss_kib"] / 1024, 1),
        "cpu_s": round(got["cpu_s"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--work-dir", default=None, help="where the images go (default: a temporary folder, removed)")
    ap.add_argument("--json-out", default=str(Path(__file__).with_name("bulk_memory.json")))
    args = ap.parse_args(argv)
    from tagloop.testing import save_tiny_wd14_onnx

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tagloop-bulk-"))
    model = save_tiny_wd14_onnx(work / "model", num_general=64, num_character=8, size=64, seed=1)
    rows = []
    try:
        for n in args.sizes:
            data = work / f"images-{n}"
            t0 = time.perf_counter()
            make_images(data, n)
            made = time.perf_counter() - t0
            manifest = work / f"manifest-{n}.jsonl"
            common = ["--model", str(model), "--device", "cpu", "-q", "--batch-size", "64"]
            first = run(["tag", str(data), "-r", "--sidecar", "--out", str(manifest), *common])
            resume = run(["tag", str(data), "-r", "--sidecar", "--out", str(manifest), *common])
            retag = run(["retag", str(manifest), "--threshold", "0.4"])
            stats = run(["stats", str(manifest), "--format", "json"])
            naive = run(["tag", str(data), "-r", "--format", "json", *common])
            row = {
                "images": n,
                "made_s": round(made, 1),
                "tag": first,
                "resume": resume,
                "retag": retag,
                "stats": stats,
                "json_no_manifest": naive,
                "manifest_mib": round(manifest.stat().st_size / 2**20, 1),
                "images_per_s": round(n / first["seconds"], 1),
            }
            rows.append(row)
            print(
                f"{n:>8} images: tag {first['seconds']:>7.1f} s ({row['images_per_s']:.0f}/s) peak {first['peak_rss_mib']:>6.0f} MiB | "
                f"resume {resume['seconds']:>6.1f} s {resume['peak_rss_mib']:>5.0f} MiB | retag {retag['seconds']:>5.1f} s "
                f"{retag['peak_rss_mib']:>5.0f} MiB | json {naive['peak_rss_mib']:>5.0f} MiB | manifest {row['manifest_mib']} MiB",
                flush=True,
            )
            shutil.rmtree(data)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    out = {
        "rows": rows,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "command": "python bench/bulk_memory.py " + " ".join(argv or sys.argv[1:]),
    }
    Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
