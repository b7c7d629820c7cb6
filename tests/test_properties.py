"""Property tests: random image shapes (1..300 per side) and random specs.

Whatever the draw, the output has the spec's shape and dtype and agrees with the reference pipeline
within the documented bound (_reference.assert_matches_reference), and a batch of mixed images
equals its items processed one by one. Resize targets are capped (longer side about 4096 px) so that
a 1x300 image with a large shorter-side size does not become a giant upscale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from _imagegen import encode_png, smooth_noise
from _reference import TORCH_DTYPES, Interpolation, assert_matches_reference
from hypothesis import given, settings
from hypothesis import strategies as st

import stoker

SIDE = st.integers(min_value=1, max_value=300)


@dataclass(frozen=True)
class Case:
    height: int
    width: int
    seed: int
    spec: dict[str, Any]


@st.composite
def specs(draw: Any, height: int, width: int) -> dict[str, Any]:
    short, long = min(height, width), max(height, width)
    kind = draw(st.sampled_from(["shorter", "exact", "none"]))
    size: int | tuple[int, int] | None
    if kind == "shorter":
        size = draw(st.integers(1, max(1, min(400, 4096 * short // long))))
    elif kind == "exact":
        size = (draw(st.integers(1, 400)), draw(st.integers(1, 400)))
    else:
        size = None
    crop_kind = draw(
        st.sampled_from(["int", "pair", "none"] if kind == "exact" else ["int", "pair"])
    )
    crop: int | tuple[int, int] | None
    if crop_kind == "int":
        crop = draw(st.integers(1, 400))
    elif crop_kind == "pair":
        crop = (draw(st.integers(1, 400)), draw(st.integers(1, 400)))
    else:
        crop = None
    dtype = draw(st.sampled_from(["uint8", "float32", "float16", "bfloat16"]))
    spec: dict[str, Any] = {
        "size": size,
        "crop": crop,
        "interpolation": draw(st.sampled_from(["bilinear", "bicubic", "nearest"])),
        "antialias": draw(st.booleans()),
        "layout": draw(st.sampled_from(["NCHW", "NHWC"])),
        "dtype": dtype,
    }
    if dtype != "uint8" and draw(st.booleans()):
        spec["mean"] = tuple(draw(st.floats(0.0, 1.0)) for _ in range(3))
        spec["std"] = tuple(draw(st.floats(0.05, 2.0)) for _ in range(3))
    return spec


@st.composite
def cases(draw: Any) -> Case:
    height, width = draw(SIDE), draw(SIDE)
    if draw(st.booleans()):  # often a strong aspect ratio
        width = max(1, min(300, height * draw(st.integers(2, 60))))
    seed = draw(st.integers(0, 2**31 - 1))
    return Case(height, width, seed, draw(specs(height, width)))


@settings(max_examples=150, deadline=None)
@given(cases())
def test_random_image_random_spec(case: Case) -> None:
    rgb = smooth_noise(case.height, case.width, case.seed)
    spec = stoker.ImageSpec(**case.spec)
    out = stoker.preprocess_batch([encode_png(rgb)], spec)
    assert tuple(out.shape) == (1, *spec.item_shape)
    assert out.dtype == TORCH_DTYPES[spec.dtype]
    assert out.is_contiguous()
    assert_matches_reference(out[0], rgb, spec, f"{case.height}x{case.width}")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(SIDE, SIDE, st.integers(0, 2**31 - 1)), min_size=1, max_size=6),
    st.sampled_from(["bilinear", "bicubic", "nearest"]),
    st.integers(1, 120),
    st.tuples(st.integers(1, 120), st.integers(1, 120)),
)
def test_batch_equals_items_alone(
    shapes: list[tuple[int, int, int]],
    interpolation: Interpolation,
    size: int,
    crop: tuple[int, int],
) -> None:
    images = []
    for h, w, seed in shapes:
        images.append(encode_png(smooth_noise(h, w, seed)))
    spec = stoker.ImageSpec(
        size=size, crop=crop, interpolation=interpolation, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    batch = stoker.preprocess_batch(images, spec)
    assert tuple(batch.shape) == (len(images), 3, *crop)
    for i, data in enumerate(images):
        assert torch.equal(batch[i], stoker.preprocess_batch([data], spec)[0]), f"item {i}"
