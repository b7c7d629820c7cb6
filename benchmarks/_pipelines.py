"""The ImageNet eval preprocessing pipeline, in stoker and in the usual Python stacks.

Every implementation turns a batch of JPEG bytes into the same (N, 3, 224, 224) float32 NCHW batch:
decode, resize the shorter side to 256 (bilinear, antialiased), center crop 224, normalize with the
ImageNet mean/std. Baselines write each image into a preallocated batch array, as a DataLoader's
collate would. `compare` checks an implementation's output against stoker's.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

SIZE = 256
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_SCALE = (1.0 / (255.0 * np.asarray(STD))).astype(np.float32)
_OFFSET = (np.asarray(MEAN) / np.asarray(STD)).astype(np.float32)

Batch = Sequence[bytes]
BatchFn = Callable[[Batch], Any]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


# --------------------------------------------------------------------------------------------
# The pipeline's geometry, as torchvision defines it.


def resize_target(width: int, height: int, size: int = SIZE) -> tuple[int, int]:
    """(width, height) after torchvision's `Resize(size)`: the shorter side becomes `size`."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, crop: int = CROP) -> tuple[int, int]:
    """(left, top) of torchvision's `CenterCrop(crop)` (the images here are never smaller)."""
    return round((width - crop) / 2.0), round((height - crop) / 2.0)


def normalize_into(hwc: U8, out: F32) -> None:
    """(x / 255 - mean) / std of a (H, W, 3) uint8 crop, written as (3, H, W) into `out`."""
    x = hwc.astype(np.float32)
    x *= _SCALE
    x -= _OFFSET
    out[...] = x.transpose(2, 0, 1)


def crop_normalize_into(resized: U8, out: F32) -> None:
    h, w = resized.shape[:2]
    left, top = crop_box(w, h)
    normalize_into(resized[top : top + CROP, left : left + CROP], out)


def new_batch(n: int) -> F32:
    return np.empty((n, 3, CROP, CROP), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Implementations. Each builder returns a function that turns a batch of JPEG bytes into a
# (N, 3, 224, 224) float32 batch, or raises ImportError when its library is missing.


def _no_threads(n: int) -> None:
    """For libraries without a thread pool of their own."""


@dataclass
class Impl:
    key: str
    label: str
    fn: BatchFn
    set_threads: Callable[[int], None] = _no_threads


def _stoker_impl(key: str, label: str, reduce_gap: float | None, pin: bool | None) -> Impl:
    import stoker

    spec = stoker.ImageSpec(size=SIZE, crop=CROP, mean=MEAN, std=STD, reduce_gap=reduce_gap)

    def fn(batch: Batch) -> torch.Tensor:
        return stoker.preprocess_batch(batch, spec, pin_memory=pin)

    return Impl(key, label, fn, stoker.set_num_threads)


def _pil_impl(draft: bool) -> Impl:
    from PIL import Image

    def fn(batch: Batch) -> F32:
        out = new_batch(len(batch))
        for i, data in enumerate(batch):
            src = Image.open(io.BytesIO(data))
            tw, th = resize_target(*src.size)
            if draft:
                src.draft("RGB", (tw, th))
            img = src.convert("RGB").resize((tw, th), Image.Resampling.BILINEAR)
            crop_normalize_into(np.asarray(img), out[i])
        return out

    if draft:
        return Impl("pil-draft", "PIL + draft (DCT scaling)", fn)
    return Impl("pil", "PIL", fn)


def _cv2_resize_into(rgb: U8, out: F32) -> None:
    import cv2

    h, w = rgb.shape[:2]
    tw, th = resize_target(w, h)
    interp = cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR
    crop_normalize_into(cast(U8, cv2.resize(rgb, (tw, th), interpolation=interp)), out)


def _cv2_set_threads(n: int) -> None:
    import cv2

    cv2.setNumThreads(n)


def _cv2_impl() -> Impl:
    import cv2

    def fn(batch: Batch) -> F32:
        out = new_batch(len(batch))
        for i, data in enumerate(batch):
            bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"cv2.imdecode failed on item {i}")
            _cv2_resize_into(cast(U8, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), out[i])
        return out

    return Impl("cv2", "OpenCV (INTER_AREA)", fn, _cv2_set_threads)


def _simplejpeg_impl(scaled: bool) -> Impl:
    import simplejpeg

    try:
        import cv2  # noqa: F401  (the resize step)
    except ImportError as e:
        raise ImportError(f"simplejpeg rows resize with OpenCV, which is missing ({e})") from e

    def fn(batch: Batch) -> F32:
        out = new_batch(len(batch))
        for i, data in enumerate(batch):
            if scaled:
                h, w, _, _ = simplejpeg.decode_jpeg_header(data)
                tw, th = resize_target(w, h)
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=th, min_width=tw)
            else:
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB")
            _cv2_resize_into(rgb, out[i])
        return out

    if scaled:
        return Impl(
            "simplejpeg-scaled", "simplejpeg + DCT scaling, cv2 resize", fn, _cv2_set_threads
        )
    return Impl("simplejpeg", "simplejpeg, cv2 resize", fn, _cv2_set_threads)


def _torchvision_impl() -> Impl:
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.Resize(SIZE, antialias=True),
            v2.CenterCrop(CROP),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(MEAN), std=list(STD)),
        ]
    )

    def fn(batch: Batch) -> torch.Tensor:
        out = torch.empty((len(batch), 3, CROP, CROP), dtype=torch.float32)
        for i, data in enumerate(batch):
            encoded = torch.frombuffer(data, dtype=torch.uint8)
            out[i] = transform(decode_jpeg(encoded, mode=ImageReadMode.RGB))
        return out

    return Impl("torchvision", "torchvision v2", fn, torch.set_num_threads)


IMPL_KEYS = (
    "stoker",
    "stoker-rg1",
    "stoker-rg2",
    "pil",
    "pil-draft",
    "cv2",
    "simplejpeg",
    "simplejpeg-scaled",
    "torchvision",
)
STOKER_VARIANTS = {"stoker": None, "stoker-rg1": 1.0, "stoker-rg2": 2.0}
# Baselines that decode JPEGs at a reduced DCT scale, like stoker's reduce_gap=1.0.
SCALED_BASELINES = ("pil-draft", "simplejpeg-scaled")


def build_impl(key: str, pin: bool | None) -> Impl:
    if key in STOKER_VARIANTS:
        gap = STOKER_VARIANTS[key]
        label = "stoker" if gap is None else f"stoker reduce_gap={gap}"
        return _stoker_impl(key, label, gap, pin)
    builders: dict[str, Callable[[], Impl]] = {
        "pil": lambda: _pil_impl(draft=False),
        "pil-draft": lambda: _pil_impl(draft=True),
        "cv2": _cv2_impl,
        "simplejpeg": lambda: _simplejpeg_impl(scaled=False),
        "simplejpeg-scaled": lambda: _simplejpeg_impl(scaled=True),
        "torchvision": _torchvision_impl,
    }
    return builders[key]()


# --------------------------------------------------------------------------------------------
# Checks against stoker.


def as_numpy(x: Any) -> F32:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().numpy(), dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def compare(ref: F32, out: F32) -> dict[str, Any]:
    """Shape check and abs difference on the 0-255 scale (undoing the std division)."""
    if ref.shape != out.shape:
        return {"shape_ok": False, "shape": list(out.shape), "ref_shape": list(ref.shape)}
    to_255 = (np.asarray(STD, dtype=np.float32) * 255.0).reshape(1, 3, 1, 1)
    diff = np.abs(ref - out) * to_255
    return {
        "shape_ok": True,
        "shape": list(out.shape),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
    }


def quiet_warnings() -> None:
    """Known, harmless warnings of the baselines: torch.frombuffer on read-only bytes (nothing
    writes to it), and torchvision's deprecation of its decoders in favor of TorchCodec."""
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    warnings.filterwarnings("ignore", message=".*TorchCodec")
