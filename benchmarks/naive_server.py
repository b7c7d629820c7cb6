"""The naive baseline server: FastAPI, PIL preprocessing and one model call per request.

It speaks the same KServe v2 binary request as stoker (one BYTES input of encoded images) and
answers the same outputs (top-k class ids and scores as JSON), so one load generator drives both
and every speed claim is a side-by-side ratio. It is what a team writes first: handlers run in
FastAPI's thread pool, each image is decoded and resized by Pillow, and the model runs once per
request without batching across requests.

    python benchmarks/naive_server.py --model small --port 8001
"""

from __future__ import annotations

import argparse
import io
import json
import struct
from typing import Any

import numpy as np
import torch
from _nets import build_model
from _pipelines import CROP, MEAN, STD, crop_box, resize_target
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from PIL import Image


def preprocess(data: bytes) -> torch.Tensor:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = resize_target(*img.size)
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = crop_box(w, h)
    img = img.crop((left, top, left + CROP, top + CROP))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def split_images(body: bytes, header_length: int) -> tuple[dict[str, Any], list[bytes]]:
    header = json.loads(body[:header_length])
    raw = body[header_length:]
    images, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        images.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return header, images


def create_naive_app(
    model: torch.nn.Module, device: str = "cpu", dtype: torch.dtype | None = None, top_k: int = 5
) -> FastAPI:
    app = FastAPI()
    model = model.to(device).eval()
    if dtype is not None:
        model = model.to(dtype)

    def run(images: list[bytes]) -> tuple[list[int], list[float]]:
        batch = torch.stack([preprocess(i) for i in images]).to(device)
        with torch.inference_mode():
            logits = model(batch if dtype is None else batch.to(dtype))
        values, ids = logits.float().softmax(-1).topk(top_k, dim=-1)
        return ids.flatten().tolist(), values.flatten().tolist()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        body = await request.body()
        try:
            header_length = int(request.headers["inference-header-content-length"])
            header, images = split_images(body, header_length)
            ids, scores = await run_in_threadpool(run, images)
        except Exception as e:  # a baseline still answers bad input with a status, not a crash
            return JSONResponse({"error": str(e)}, status_code=400)
        shape = [len(images), top_k]
        return JSONResponse(
            {
                "model_name": name,
                "model_version": "1",
                "id": header.get("id", ""),
                "outputs": [
                    {"name": "class_ids", "datatype": "INT64", "shape": shape, "data": ids},
                    {"name": "scores", "datatype": "FP32", "shape": shape, "data": scores},
                ],
            }
        )

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200)

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", help="small, tiny or a torchvision name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    app = create_naive_app(build_model(args.model), args.device, dtype)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
