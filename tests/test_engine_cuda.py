"""The engine on a GPU (skipped without one): same answers as the model on stoker's batch."""

from __future__ import annotations

import pytest
import torch
from _imagegen import jpeg_rgb
from _models import TinyNet

import stoker

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPEC = stoker.ImageSpec(size=40, crop=32, mean=stoker.IMAGENET_MEAN, std=stoker.IMAGENET_STD)
IMAGES = [jpeg_rgb(48 + i % 5, 50 + i % 7, i) for i in range(40)]


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_cuda_engine_matches_the_model(graphs: bool, channels_last: bool) -> None:
    model = TinyNet().cuda()
    with torch.inference_mode():
        expected = model(stoker.preprocess_batch(IMAGES, SPEC).cuda()).cpu()
    with stoker.Engine(
        TinyNet(),
        SPEC,
        device="cuda",
        max_batch_size=16,
        max_delay_ms=5,
        cuda_graphs=graphs,
        channels_last=channels_last,
    ) as engine:
        futures = [engine.submit(d, timed=True) for d in IMAGES]
        answers = [f.result(timeout=60) for f in futures]
    got = torch.stack([a[0] for a in answers])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    timings = [a[1] for a in answers]
    assert all(t.h2d > 0 and t.compute > 0 for t in timings)


def test_cuda_engine_in_half_precision_agrees_on_classes() -> None:
    model = TinyNet().cuda()
    with torch.inference_mode():
        expected = model(stoker.preprocess_batch(IMAGES, SPEC).cuda()).argmax(1).tolist()
    with stoker.Engine(
        TinyNet(), SPEC, device="cuda", dtype=torch.float16, postprocess=stoker.top_k(1)
    ) as engine:
        got = [engine.infer_sync(d)[0][0] for d in IMAGES]
    agree = sum(a == b for a, b in zip(got, expected, strict=True))
    assert agree >= len(IMAGES) - 2


def test_cuda_engine_with_gpu_decode_agrees_with_the_cpu_path() -> None:
    from stoker._gpu_decode import gpu_decode_available

    if not gpu_decode_available("cuda"):
        pytest.skip("needs torchvision with nvJPEG")
    images = [jpeg_rgb(120 + i % 7, 96 + i % 5, 50 + i) for i in range(48)]
    model = TinyNet().cuda()
    with torch.inference_mode():
        expected = model(stoker.preprocess_batch(images, SPEC).cuda()).cpu()
    with stoker.Engine(
        TinyNet(), SPEC, device="cuda", max_batch_size=16, max_delay_ms=5, gpu_decode=1.0
    ) as engine:
        futures = [engine.submit(d, timed=True) for d in images]
        answers = [f.result(timeout=60) for f in futures]
    got = torch.stack([a[0] for a in answers])
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a level or two.
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)
    assert sum(a[1].preprocess for a in answers) > 0
