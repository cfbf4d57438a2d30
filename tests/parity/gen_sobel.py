#!/usr/bin/env python3
"""Reference fixture tests/fixtures/sobel/: the Sobel edge convention of vadapt's edge-conditioning channel
(src/vision/edges.rs), computed by OpenCV on procedural tabletop frames.

    nice -n 19 .venv/bin/python tests/parity/gen_sobel.py [--out tests/fixtures/sobel]

Convention (what `expected.safetensors` holds), for an RGB uint8 frame (H, W, 3):
    r, g, b = rgb / 255 (f32);  gray = (0.299 r + 0.587 g) + 0.114 b  (f32)
    gx = cv2.Sobel(gray, CV_32F, 1, 0, ksize=3, borderType=BORDER_REPLICATE); gy likewise with (0, 1)
    mag = sqrt(gx^2 + gy^2)  (f32)
The script cross-checks OpenCV against a plain numpy stencil in f32 and f64 and records the differences in
generation_report.json.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
from safetensors.numpy import save_file

from fixture_common import FIXTURES, command, sha256, versions, write_json

SEED = 2468
SIZES = [(24, 40), (48, 80), (180, 320)]


def tabletop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A synthetic tabletop seen from above: a flat board colour, a soft illumination gradient, a soft shadow blob,
    4-7 hard-edged coloured squares and discs, N(0, 2^2) sensor noise; rounded and clipped to uint8."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    board = rng.uniform(90, 170, size=3)
    img = np.broadcast_to(board, (h, w, 3)).copy()
    # Illumination: a linear ramp in a random direction, +-25 grey levels over the frame.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx / max(w - 1, 1) - 0.5) + np.sin(angle) * (yy / max(h - 1, 1) - 0.5)) * 50.0
    img += ramp[..., None]
    # A soft shadow: a Gaussian blob darkening the board by up to 40 levels.
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    sigma = rng.uniform(0.15, 0.3) * min(h, w)
    img -= 40.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))[..., None]
    # Objects: squares and discs with hard edges, each one flat colour.
    for _ in range(rng.integers(4, 8)):
        colour = rng.uniform(0, 255, size=3)
        size = rng.uniform(0.08, 0.25) * min(h, w)
        oy, ox = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            mask = (np.abs(yy - oy) <= size / 2) & (np.abs(xx - ox) <= size / 2)
        else:
            mask = (yy - oy) ** 2 + (xx - ox) ** 2 <= (size / 2) ** 2
        img[mask] = colour
    img += rng.normal(0.0, 2.0, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def gray_of(rgb: np.ndarray, dtype) -> np.ndarray:
    x = rgb.astype(dtype) / dtype(255.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return (r * dtype(0.299) + g * dtype(0.587)) + b * dtype(0.114)


def numpy_sobel(gray: np.ndarray):
    """The 3x3 cross-correlation with replicated borders, written out."""
    p = np.pad(gray, 1, mode="edge")
    h, w = gray.shape

    def at(di, dj):
        return p[1 + di : 1 + di + h, 1 + dj : 1 + dj + w]

    gx = -at(-1, -1) + at(-1, 1) - 2 * at(0, -1) + 2 * at(0, 1) - at(1, -1) + at(1, 1)
    gy = -at(-1, -1) - 2 * at(-1, 0) - at(-1, 1) + at(1, -1) + 2 * at(1, 0) + at(1, 1)
    return gx, gy, np.sqrt(gx * gx + gy * gy)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES / "sobel")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    inputs, expected, frames = {}, {}, {}
    for i, (h, w) in enumerate(SIZES):
        rgb = tabletop(rng, h, w)
        gray = gray_of(rgb, np.float32)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
        mag = np.sqrt(gx * gx + gy * gy)
        stem = f"frame{i}"
        inputs[f"{stem}.rgb"] = np.ascontiguousarray(rgb)
        for k, v in [("gray", gray), ("gx", gx), ("gy", gy), ("mag", mag)]:
            expected[f"{stem}.{k}"] = np.ascontiguousarray(v, dtype=np.float32)

        n32 = numpy_sobel(gray)
        n64 = numpy_sobel(gray.astype(np.float64))
        gray64 = gray_of(rgb, np.float64)
        a64 = numpy_sobel(gray64)
        cvt = cv2.cvtColor(rgb.astype(np.float32) / np.float32(255.0), cv2.COLOR_RGB2GRAY)
        names = ("gx", "gy", "mag")
        ours = (gx, gy, mag)
        frames[stem] = {
            "shape": [h, w],
            "checks": {
                "cv2_vs_numpy_f32": {n: max_abs(o, r) for n, o, r in zip(names, ours, n32)},
                "cv2_vs_numpy_f64_same_gray": {n: max_abs(o, r) for n, o, r in zip(names, ours, n64)},
                "cv2_vs_numpy_f64_gray_f64": {n: max_abs(o, r) for n, o, r in zip(names, ours, a64)},
                "gray_f32_vs_f64": max_abs(gray, gray64),
                "gray_vs_cv2_cvtColor_RGB2GRAY_f32": max_abs(gray, cvt),
                "ranges": {
                    k: [float(v.min()), float(v.max())] for k, v in [("gray", gray), ("gx", gx), ("gy", gy), ("mag", mag)]
                },
            },
        }

    save_file(
        inputs,
        str(args.out / "inputs.safetensors"),
        metadata={"layout": "(height, width, 3) RGB uint8, row-major", "seed": str(SEED)},
    )
    save_file(
        expected,
        str(args.out / "expected.safetensors"),
        metadata={
            "convention": "gray=0.299R+0.587G+0.114B of rgb/255; cv2.Sobel ksize=3 CV_32F BORDER_REPLICATE; "
            "mag=sqrt(gx^2+gy^2)",
            "layout": "(height, width) float32",
        },
    )
    write_json(
        args.out / "generation_report.json",
        {
            "command": command(),
            "seed": SEED,
            "sizes": [list(s) for s in SIZES],
            "versions": versions(),
            "frames": frames,
            "files_sha256": {f: sha256(args.out / f) for f in ("inputs.safetensors", "expected.safetensors")},
        },
    )
    worst = max(v for f in frames.values() for c in ("cv2_vs_numpy_f32",) for v in f["checks"][c].values())
    print(f"sobel: wrote {args.out} (cv2 vs numpy f32 worst {worst:.3e})")


if __name__ == "__main__":
    main()
