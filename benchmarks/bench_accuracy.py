"""How far stoker's output is from a full-decode reference, per resize mode.

Reference: Pillow decodes the whole JPEG, `torch.nn.functional.interpolate(..., antialias=True)`
resizes the uint8 pixels (the kernel torchvision's `Resize` uses on uint8), then the center crop.
stoker runs the same geometry with `dtype="uint8"`, so the errors are whole levels on the 0-255
scale. `reduce_gap` rows measure what JPEG DCT-scaled decoding costs in accuracy; the full-decode
rows should stay within 1 level. When torchvision is importable, stoker is also compared with
torchvision v2 (`decode_jpeg` + `Resize` + `CenterCrop`).

    python benchmarks/bench_accuracy.py [--quick] [--sets small,large] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import io
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from _images import IMAGE_SETS
from _pipelines import CROP, SIZE, crop_box, quiet_warnings, resize_target
from _report import library_versions, machine_info, markdown_table, write_json
from PIL import Image

INTERPOLATIONS: tuple[Literal["bilinear", "bicubic"], ...] = ("bilinear", "bicubic")
REDUCE_GAPS: tuple[float | None, ...] = (None, 1.0, 2.0)
U8 = npt.NDArray[np.uint8]


def reference(data: bytes, interpolation: str) -> U8:
    """(3, 224, 224) uint8: Pillow full decode, torch antialiased resize on uint8, center crop."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    h, w = rgb.shape[:2]
    tw, th = resize_target(w, h)
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    y = torch.nn.functional.interpolate(
        x, size=(th, tw), mode=interpolation, antialias=True, align_corners=False
    )[0]
    left, top = crop_box(tw, th)
    return np.asarray(y[:, top : top + CROP, left : left + CROP].numpy(), dtype=np.uint8)


def torchvision_fn(interpolation: str) -> Callable[[bytes], U8] | None:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms import InterpolationMode, v2
    except ImportError:
        return None
    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
    transform = v2.Compose(
        [v2.Resize(SIZE, interpolation=mode[interpolation], antialias=True), v2.CenterCrop(CROP)]
    )

    def fn(data: bytes) -> U8:
        img = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
        return np.asarray(transform(img).numpy(), dtype=np.uint8)

    return fn


def error_stats(got: U8, want: U8) -> dict[str, float]:
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "p99_abs": float(np.percentile(diff, 99)),
        "share_over_1": float((diff > 1).mean()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer images, for smoke tests")
    p.add_argument("--sets", default="small,large", help="image sets: small,large")
    p.add_argument("--json", metavar="PATH", help="write every number and the machine here")
    args = p.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    for s in sets:
        if s not in IMAGE_SETS:
            sys.exit(f"unknown image set {s!r}; choose from {', '.join(IMAGE_SETS)}")
    n_images = {"small": 8 if args.quick else 32, "large": 2 if args.quick else 8}

    quiet_warnings()
    try:
        import stoker
    except ImportError as e:
        sys.exit(f"stoker is not importable ({e}); build it first: make setup")

    has_tv = torchvision_fn("bilinear") is not None
    if not has_tv:
        print("note: torchvision is not importable; the comparison with it is skipped")
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": library_versions(),
        "reference": "Pillow full decode, torch interpolate(antialias=True) on uint8, center crop",
        "rows": [],
    }
    rows = []
    for set_name in sets:
        images = IMAGE_SETS[set_name](n_images[set_name])
        print(f"{set_name}: {len(images)} images", flush=True)
        for interp in INTERPOLATIONS:
            want = np.stack([reference(b, interp) for b in images])
            tv = torchvision_fn(interp)
            tv_out = np.stack([tv(b) for b in images]) if tv is not None else None
            for gap in REDUCE_GAPS:
                spec = stoker.ImageSpec(
                    size=SIZE, crop=CROP, interpolation=interp, reduce_gap=gap, dtype="uint8"
                )
                got = np.asarray(stoker.preprocess_batch_numpy(images, spec), dtype=np.uint8)
                stats = error_stats(got, want)
                tv_stats = error_stats(got, tv_out) if tv_out is not None else None
                results["rows"].append(
                    {
                        "set": set_name,
                        "n_images": len(images),
                        "interpolation": interp,
                        "reduce_gap": gap,
                        "vs_reference": stats,
                        "vs_torchvision": tv_stats,
                    }
                )
                row = [
                    set_name,
                    interp,
                    "full decode" if gap is None else f"{gap:g}",
                    f"{stats['max_abs']:.0f}",
                    f"{stats['mean_abs']:.3f}",
                    f"{stats['p99_abs']:.0f}",
                    f"{100 * stats['share_over_1']:.2f}%",
                ]
                if has_tv:
                    row.append(
                        "-"
                        if tv_stats is None
                        else f"{tv_stats['max_abs']:.0f} / {tv_stats['mean_abs']:.3f}"
                    )
                rows.append(row)

    header = ["set", "interpolation", "reduce_gap", "max abs", "mean abs", "p99 abs", "> 1 level"]
    if has_tv:
        header.append("vs torchvision v2 max / mean")
    print("\nstoker uint8 output vs full-decode reference (0-255 levels):\n")
    print(markdown_table(header, rows))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
