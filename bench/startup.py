"""Start-up cost: wall time and peak memory of short tagloop commands, each in a fresh process.

Cases: ``tagloop --help``; ``tagloop tag`` on one image with an ONNX tagger (a small WD14-layout
graph); the same with the DeepDanbooru port (tiny widths, the real architecture). Each case runs
``--repeat`` times; the table shows the median wall time and the largest peak RSS of the child
(``resource.getrusage(RUSAGE_CHILDREN)`` read by a fresh wrapper per run), and which heavy modules
the child imported. "naive" is the same ONNX tagging run with torch imported first, as tagloop did
before device resolution stopped asking torch for ONNX models.

    python bench/startup.py                  # prints a table, writes bench/startup.json
    python bench/startup.py --repeat 5 --json-out /tmp/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": r.returncode, "wall": wall, "rss_kib": rss, "stderr": r.stderr[-2000:]}))
"""

_PROBE = r"""
import runpy, sys
sys.argv = ["tagloop"] + sys.argv[1:]
try:
    runpy.run_module("tagloop", run_name="__main__")
except SystemExit:
    pass
finally:
    heavy = [m for m in ("torch", "diffusers", "transformers", "timm", "onnxruntime") if m in sys.modules]
    print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""

_NAIVE = "import torch  # noqa: F401  (what device resolution through torch costs)\n" + _PROBE


def measure(argv: list[str], env: dict[str, str], repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(out.stdout))
    bad = [r for r in runs if r["rc"] != 0]
    if bad:
        raise SystemExit(f"{' '.join(argv)} failed: {bad[0]['stderr']}")
    heavy = ""
    for line in runs[-1]["stderr"].splitlines():
        if line.startswith("HEAVY="):
            heavy = line[6:]
    return {
        "wall_s": statistics.median(r["wall"] for r in runs),
        "peak_rss_mib": max(r["rss_kib"] for r in runs) / 1024.0,
        "runs": [r["wall"] for r in runs],
        "heavy_imports": heavy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-out", default=str(Path(__file__).with_name("startup.json")))
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from tagloop.testing import save_tiny_deepdanbooru, save_tiny_wd14_onnx

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wd = save_tiny_wd14_onnx(tmp / "wd", size=448)
        dd, _ = save_tiny_deepdanbooru(tmp / "dd" / "model-resnet_custom_v3.safetensors", num_tags=64)
        img = tmp / "one.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (1024, 768, 3), dtype=np.uint8)).save(img, quality=90)
        probe = [sys.executable, "-c", _PROBE]
        cases = [
            ("tagloop --help", probe + ["--help"]),
            ("tag, ONNX tagger (WD14 layout, 448)", probe + ["tag", str(img), "--model", str(wd), "-q"]),
            (
                "tag, ONNX tagger, torch imported first (naive)",
                [sys.executable, "-c", _NAIVE, "tag", str(img), "--model", str(wd), "-q"],
            ),
            ("tag, DeepDanbooru port (tiny widths)", probe + ["tag", str(img), "--model", str(dd), "-q"]),
        ]
        rows = []
        for name, argv in cases:
            m = measure(argv, env, args.repeat)
            rows.append({"case": name, **m})

    print(f"{'case':<50} {'wall s':>8} {'peak MiB':>9}  heavy imports")
    for r in rows:
        print(f"{r['case']:<50} {r['wall_s']:>8.2f} {r['peak_rss_mib']:>9.0f}  {r['heavy_imports'] or '-'}")
    record = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
        "rows": rows,
    }
    Path(args.json_out).write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
