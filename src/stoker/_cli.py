"""The `stoker` command: `stoker demo`, `stoker serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

app = typer.Typer(help="stoker: serve PyTorch models so the GPU never waits.", add_completion=False)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="timing per figure")] = 2.5,
) -> None:
    """Preprocess generated sample images with stoker and with Pillow; print both rates."""
    from stoker import _demo

    raise typer.Exit(_demo.run(seconds=seconds))


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option(help="torchvision architecture name or model file")
    ] = None,
    name: Annotated[str | None, typer.Option(help="model name in URLs (default: --model)")] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with [server] and [[models]] tables")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="state-dict file for --model")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    dtype: Annotated[Literal["float32", "float16", "bfloat16"] | None, typer.Option()] = None,
    max_batch_size: Annotated[int, typer.Option()] = 32,
    max_delay_ms: Annotated[float, typer.Option()] = 2.0,
    capacity: Annotated[int, typer.Option(help="queued requests before 503s")] = 1024,
    top_k: Annotated[int, typer.Option()] = 5,
    host: Annotated[str | None, typer.Option(help="bind address [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: 8000]")] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token required on all but health endpoints")
    ] = None,
    timeout_ms: Annotated[float | None, typer.Option(help="per-request queue deadline")] = None,
    gpu_decode: Annotated[
        str | None, typer.Option(help="share of JPEGs decoded on the GPU (0..1) or 'auto'")
    ] = None,
    front: Annotated[
        Literal["native", "uvicorn"],
        typer.Option(help="native: the C++ HTTP server takes the hot path; uvicorn: all Python"),
    ] = "native",
    io_threads: Annotated[int, typer.Option(help="native front: I/O threads")] = 1,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Serve models over HTTP: KServe v2 (Open Inference Protocol), a plain image endpoint and
    Prometheus metrics."""
    try:
        import uvicorn

        from stoker.server import ModelConfig, ServerConfig, create_app, load_config
    except ImportError as e:
        raise typer.BadParameter(
            f"serving needs the server extra (pip install stoker[server]): {e}"
        ) from e
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "token": token,
        "timeout_ms": timeout_ms,
    }
    if config is not None:
        if model is not None:
            raise typer.BadParameter("give models in --config or with --model, not both")
        settings = load_config(config, **overrides)
    elif model is None:
        raise typer.BadParameter("give --model or --config")
    else:
        served = ModelConfig(
            name=name or Path(model).stem,
            model=model,
            weights=weights,
            device=device,
            dtype=dtype,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            capacity=capacity,
            top_k=top_k,
            gpu_decode=_share(gpu_decode),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = ServerConfig(models=(served,), **given)
    if weights is None and config is None and not Path(model or "").is_file():
        typer.echo(f"note: {model} runs with random weights (no --weights given)", err=True)
    if front == "native":
        import logging

        from stoker.server import serve_native

        logging.basicConfig(level=log_level.upper())
        serve_native(settings, io_threads=io_threads)
        return
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


def _share(value: str | None) -> float | Literal["auto"] | None:
    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(
            f"--gpu-decode takes a share in [0, 1] or 'auto', not {value!r}"
        ) from None
