"""WD14 preprocessing of long images: tagloop's piecewise resize vs the naive full-resolution white square.

Each case runs in a fresh child process; the table shows wall time of the preprocessing call and the
child's peak RSS above what it held after decoding the image (``resource.getrusage`` ``ru_maxrss``),
and the largest difference between the two outputs. "naive" pastes the image on a white
``max(w, h)`` square and resizes that with Pillow's bicubic filter, as the reference WD code does.
The naive run of the largest case needs several GB: pass ``--skip-naive-above PIXELS`` to leave it out.

    python bench/preprocess_memory.py                       # prints a table, writes bench/preprocess_memory.json
    python bench/preprocess_memory.py --sizes 40000x100,512x768
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from tagloop.tagger.preprocess import wd14
w, h, mode, size = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rng = np.random.default_rng(0)
img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "tagloop":
    out = wd14(img, size)
else:
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    out = np.asarray(square.resize((size, size), Image.BICUBIC))[:, :, ::-1]
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[6], np.ascontiguousarray(out))
print(json.dumps({"wall_s": wall, "extra_rss_mib": (peak - base) / 1024.0}))
"""


def run(w: int, h: int, mode: str, size: int, out: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), str(w), str(h), mode, str(size), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512x768,2000x50,20000x10,40000x100")
    ap.add_argument("--size", type=int, default=448, help="model input side")
    ap.add_argument("--skip-naive-above", type=int, default=0, help="skip the naive run above this many square pixels")
    ap.add_argument("--json-out", default=str(Path(__file__).with_name("preprocess_memory.json")))
    args = ap.parse_args()

    import tempfile

    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.sizes.split(","):
            w, h = (int(v) for v in spec.lower().split("x"))
            new = run(w, h, "tagloop", args.size, Path(tmp) / "new.npy")
            row = {"size": f"{w}x{h}", "tagloop": new, "naive": None, "max_abs_diff": None}
            if not args.skip_naive_above or max(w, h) ** 2 <= args.skip_naive_above:
                row["naive"] = run(w, h, "naive", args.size, Path(tmp) / "old.npy")
                a = np.load(Path(tmp) / "new.npy").astype(int)
                b = np.load(Path(tmp) / "old.npy").astype(int)
                row["max_abs_diff"] = int(np.abs(a - b).max())
            rows.append(row)

    print(f"{'image':<12} {'naive s':>8} {'naive MiB':>10} {'tagloop s':>10} {'tagloop MiB':>12} {'max diff':>9}")
    for r in rows:
        n = r["naive"] or {}
        print(
            f"{r['size']:<12} {n.get('wall_s', float('nan')):>8.2f} {n.get('extra_rss_mib', float('nan')):>10.0f} "
            f"{r['tagloop']['wall_s']:>10.3f} {r['tagloop']['extra_rss_mib']:>12.1f} {str(r['max_abs_diff']):>9}"
        )
    Path(args.json_out).write_text(json.dumps({"model_size": args.size, "rows": rows}, indent=2), encoding="utf-8")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
