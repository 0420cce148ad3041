"""Decode-speed benchmark: one JPEG to its stored pixels, with and without PIL's reduced-scale decoding.

Every image the data cache, ``--stream`` and ``predict`` read goes through ``items.stored_pixels``, which lets
libjpeg decode at 1/2, 1/4 or 1/8 scale while the result stays at least ``DRAFT_GAP`` times the stored side.
This measures, on generated photos (smooth random colour fields, JPEG quality 90) of several sizes, the time
per image of that path against a full decode followed by the same resize and crop, their ratio, and how far
apart the pixels are (mean and max absolute difference, 0-255).

Usage:  python benchmarks/decode_speed.py [--sizes 4032x3024,1600x1200,500x375] [--stored 37,256] [--repeats 10]
Writes: benchmarks/results/decode_speed_cpu.json (with hardware and the exact command).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vitcompress.datasets.items import DRAFT_GAP, square_pixels, stored_pixels

HERE = Path(__file__).resolve().parent


def photo(path: Path, width: int, height: int, seed: int) -> None:
    """A smooth random colour field (detail at 1/16 of the size) saved as a JPEG: a stand-in for a photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8))
    coarse.resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)


def per_image_seconds(path: Path, side: int, repeats: int, reduced: bool) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    for _ in range(repeats):
        with Image.open(path) as img:
            pixels = stored_pixels(img, side) if reduced else square_pixels(img.convert("RGB"), side)
    return (time.perf_counter() - start) / repeats, pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4032x3024,1600x1200,500x375", help="photo sizes, WxH, comma-separated")
    parser.add_argument("--stored", default="37,256", help="stored sides (37: a 32 px model; 256: 224 px)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--record", default=str(HERE / "results" / "decode_speed_cpu.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n, size in enumerate(args.sizes.split(",")):
            width, height = (int(v) for v in size.split("x"))
            path = Path(folder) / f"photo_{size}.jpg"
            photo(path, width, height, seed=n)
            for side in (int(v) for v in args.stored.split(",")):
                full_s, full = per_image_seconds(path, side, args.repeats, reduced=False)
                reduced_s, reduced = per_image_seconds(path, side, args.repeats, reduced=True)
                diff = np.abs(full.astype(np.int16) - reduced.astype(np.int16))
                rows.append({"photo": size, "stored_side": side, "full_decode_ms": round(full_s * 1e3, 2),
                             "reduced_decode_ms": round(reduced_s * 1e3, 2), "speedup": round(full_s / reduced_s, 2),
                             "mean_abs_diff": round(float(diff.mean()), 3), "max_abs_diff": int(diff.max())})
                print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    record = {"benchmark": "decode_speed", "draft_gap": DRAFT_GAP, "repeats": args.repeats, "rows": rows,
              "hardware": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine()},
              "pillow": Image.__version__, "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "date": time.strftime("%Y-%m-%d")}
    out = Path(args.record)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
