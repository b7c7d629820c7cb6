"""The `stoker` command: `stoker demo`, `stoker serve`, `stoker bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

app = typer.Typer(help="stoker: serve PyTorch models so the GPU never waits.", add_completion=False)


@app.command()
def demo(
    image: Annotated[
        bool, typer.Option(help="instead: serve an image classifier (--model, --weights)")
    ] = False,
    model: Annotated[
        str, typer.Option(help="--image: tiny (embedded) or a torchvision architecture name")
    ] = "tiny",
    weights: Annotated[
        str | None, typer.Option(help="--image: state-dict file (default: random weights)")
    ] = None,
    preprocess: Annotated[
        bool, typer.Option(help="instead: stoker's preprocessing against Pillow's")
    ] = False,
    seconds: Annotated[
        float, typer.Option(help="measured seconds per load level (per figure with --preprocess)")
    ] = 2.0,
    out: Annotated[Path, typer.Option(help="folder for the report")] = Path("stoker-demo"),
) -> None:
    """Serve all-MiniLM-L6-v2 sentence embeddings with stoker, load-test them and write a report;
    print throughput, latency and the stage breakdown."""
    from stoker import _demo

    if preprocess:
        raise typer.Exit(_demo.run(seconds=seconds))
    if image:
        raise typer.Exit(_demo.serve_and_bench(out, seconds=seconds, model=model, weights=weights))
    raise typer.Exit(_demo.serve_text_and_bench(out, seconds=seconds))


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="model file, embedded model (tiny, small) or torchvision architecture name; "
            "text-embedding: a model folder [default: the installed all-minilm-l6-v2]; "
            "text-generation: a decoder model folder (config.json, safetensors, tokenizer.json)"
        ),
    ] = None,
    task: Annotated[
        Literal["image-classification", "text-embedding", "text-generation"], typer.Option()
    ] = "image-classification",
    max_tokens: Annotated[
        int | None, typer.Option(help="text-embedding: most tokens per input [default: model's]")
    ] = None,
    max_num_seqs: Annotated[
        int, typer.Option(help="text-generation: sequences decoded together")
    ] = 256,
    max_num_batched_tokens: Annotated[
        int, typer.Option(help="text-generation: tokens per step (bounds prefill stalls)")
    ] = 2048,
    max_model_len: Annotated[
        int | None, typer.Option(help="text-generation: prompt + output tokens [default: model's]")
    ] = None,
    speculative_tokens: Annotated[
        int,
        typer.Option(help="text-generation: speculative prompt-lookup draft tokens per step"),
    ] = 0,
    schedule_ahead: Annotated[
        bool,
        typer.Option(help="text-generation: launch each step before the last one's tokens"),
    ] = True,
    prompt_graph_tokens: Annotated[
        int,
        typer.Option(
            help="text-generation: steps with prompt tokens replay CUDA graphs up to this many "
            "tokens (0: eager)"
        ),
    ] = 2048,
    engine_process: Annotated[
        bool,
        typer.Option(help="text-generation: run the engine in a process of its own"),
    ] = False,
    name: Annotated[str | None, typer.Option(help="model name in URLs (default: --model)")] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with [server] and [[models]] tables")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="state-dict file for --model")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    devices: Annotated[
        str | None,
        typer.Option(
            help="image-classification: one engine per device, requests to the least loaded: "
            "0,1 (cuda:0,cuda:1), cuda:0,cuda:1 or cpu,cpu; replaces --device"
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="native preprocessing threads per engine [default: the process's pool, split "
            "evenly between --devices]"
        ),
    ] = None,
    dtype: Annotated[Literal["float32", "float16", "bfloat16"] | None, typer.Option()] = None,
    max_batch_size: Annotated[int, typer.Option(help="per engine")] = 32,
    max_delay_ms: Annotated[float, typer.Option()] = 2.0,
    capacity: Annotated[int, typer.Option(help="queued requests (per engine) before 503s")] = 1024,
    top_k: Annotated[int, typer.Option()] = 5,
    host: Annotated[str | None, typer.Option(help="bind address [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: 8000]")] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token required on all but health endpoints")
    ] = None,
    timeout_ms: Annotated[float | None, typer.Option(help="per-request queue deadline")] = None,
    switch_interval_ms: Annotated[
        float | None,
        typer.Option(help="the interpreter's thread switch interval [default: Python's, 5 ms]"),
    ] = None,
    gpu_decode: Annotated[
        str | None, typer.Option(help="share of JPEGs decoded on the GPU (0..1) or 'auto'")
    ] = None,
    front: Annotated[
        Literal["auto", "native", "uvicorn"],
        typer.Option(
            help="native: the C++ HTTP server takes the hot path and writes streamed tokens; "
            "uvicorn: all Python; auto: native unless a text-generation model is served"
        ),
    ] = "auto",
    io_threads: Annotated[int, typer.Option(help="native front: I/O threads")] = 1,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Serve models over HTTP: KServe v2 (Open Inference Protocol), a plain image endpoint and
    Prometheus metrics."""
    try:
        import uvicorn

        from stoker.server import ModelConfig, ServerConfig, create_app, load_config
        from stoker.server._config import parse_devices
    except ImportError as e:
        raise typer.BadParameter(
            f"serving needs the server extra (pip install stoker[server]): {e}"
        ) from e
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "token": token,
        "timeout_ms": timeout_ms,
        "switch_interval_ms": switch_interval_ms,
    }
    if config is not None:
        if model is not None:
            raise typer.BadParameter("give models in --config or with --model, not both")
        if devices is not None or threads is not None:
            raise typer.BadParameter("with --config, give devices and threads in its [[models]]")
        settings = load_config(config, **overrides)
    elif model is None and task in ("image-classification", "text-generation"):
        raise typer.BadParameter("give --model or --config")
    else:
        if task == "text-embedding":
            from stoker.text import DEFAULT_MODEL

            model = model or DEFAULT_MODEL
        assert model is not None
        try:
            served = ModelConfig(
                devices=parse_devices(devices) if devices is not None else None,
                threads=threads,
                name=name or Path(model).stem,
                model=model,
                task=task,
                max_tokens=max_tokens,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max_model_len,
                speculative_tokens=speculative_tokens,
                schedule_ahead=schedule_ahead,
                prompt_graph_tokens=prompt_graph_tokens,
                engine_process=engine_process,
                weights=weights,
                device=device,
                dtype=dtype,
                max_batch_size=max_batch_size,
                max_delay_ms=max_delay_ms,
                capacity=capacity,
                top_k=top_k,
                gpu_decode=_share(gpu_decode),
            )
        except ValueError as e:  # --device with --devices, a device list that is not one
            raise typer.BadParameter(str(e)) from None
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = ServerConfig(models=(served,), **given)
    image_models = [m for m in settings.models if m.task == "image-classification"]
    if weights is None and config is None and image_models and not Path(model or "").is_file():
        typer.echo(f"note: {model} runs with random weights (no --weights given)", err=True)
    generating = any(m.task == "text-generation" for m in settings.models)
    if front == "native" or (front == "auto" and not generating):
        import logging

        from stoker.server import serve_native

        logging.basicConfig(level=log_level.upper())
        for m in settings.models:
            if len(m.replicas) > 1:
                typer.echo(
                    f"note: {m.name} runs on {len(m.replicas)} devices; the native front hands "
                    "its requests to the Python router (docs/server.md, multi-device serving)",
                    err=True,
                )
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


def _numbers(text: str, kind: type[int] | type[float], option: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated numbers, not {text!r}") from None


@app.command()
def bench(
    url: Annotated[
        str | None, typer.Option(help="drive the server at this URL instead of starting stoker")
    ] = None,
    engine: Annotated[
        bool,
        typer.Option(help="drive stoker's engine in this process (asyncio callers, no HTTP)"),
    ] = False,
    model: Annotated[
        str, typer.Option(help="stoker's model: tiny or small (embedded), torchvision name, file")
    ] = "tiny",
    model_name: Annotated[
        str | None, typer.Option(help="model name in request URLs (default: from --model)")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="state-dict file for --model")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    dtype: Annotated[Literal["float32", "float16", "bfloat16"] | None, typer.Option()] = None,
    max_batch_size: Annotated[int, typer.Option()] = 32,
    max_delay_ms: Annotated[float, typer.Option()] = 2.0,
    io_threads: Annotated[int, typer.Option(help="stoker's native front: I/O threads")] = 1,
    token: Annotated[str | None, typer.Option(help="bearer token sent with every request")] = None,
    label: Annotated[
        str | None,
        typer.Option(help="name of this run in the report [default: stoker, engine with --engine]"),
    ] = None,
    baseline_cmd: Annotated[
        str | None,
        typer.Option(help="also run a server started by this command ({port} is replaced)"),
    ] = None,
    baseline_url: Annotated[
        str | None, typer.Option(help="also run the server at this URL")
    ] = None,
    baseline_label: Annotated[str, typer.Option()] = "baseline",
    images: Annotated[
        Path | None, typer.Option(help="folder of .jpg/.jpeg/.png/.webp request images")
    ] = None,
    generated: Annotated[int, typer.Option(help="photo-like JPEGs to draw without --images")] = 8,
    images_per_request: Annotated[int, typer.Option()] = 1,
    concurrency: Annotated[str, typer.Option(help="closed-loop connection counts")] = "1,4,16",
    rates: Annotated[str, typer.Option(help="open-loop request rates per second")] = "",
    rate_fractions: Annotated[
        str, typer.Option(help="open-loop rates as shares of each run's closed-loop peak")
    ] = "0.5,0.9",
    open_connections: Annotated[int, typer.Option(help="connections of open-loop levels")] = 64,
    seconds: Annotated[float, typer.Option(help="measured seconds per level")] = 5.0,
    warmup: Annotated[float, typer.Option(help="uncounted seconds before each level")] = 1.0,
    max_requests: Annotated[int, typer.Option(help="per level; 0: no limit")] = 0,
    timeout: Annotated[float, typer.Option(help="seconds before a request times out")] = 30.0,
    gen_threads: Annotated[
        int, typer.Option(help="load generator threads (HTTP; one thread drives the engine)")
    ] = 1,
    out: Annotated[Path, typer.Option(help="folder for report.html, plots and JSON")] = Path(
        "bench-report"
    ),
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(help="draw the report of two saved runs (JSON) instead of running"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="progress line on a terminal")] = True,
) -> None:
    """Load-test a KServe v2 server (stoker by default) or stoker's engine in this process, and
    write an HTML report with plots."""
    from stoker import bench as sb

    if engine and url is not None:
        raise typer.BadParameter("give --engine or --url, not both")
    run_label = label or ("engine" if engine else "stoker")
    if compare is not None:
        sb.report(sb.load_runs(list(compare)), out)
        return
    try:
        plan = sb.Plan(
            concurrency=_numbers(concurrency, int, "--concurrency"),
            rates=_numbers(rates, float, "--rates"),
            rate_fractions=_numbers(rate_fractions, float, "--rate-fractions"),
            open_connections=open_connections,
            seconds=seconds,
            warmup_s=warmup,
            max_requests=max_requests,
            timeout_s=timeout,
            gen_threads=gen_threads,
        )
        bodies = sb.load_images(images, generated)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    name = model_name or Path(model).stem
    targets: list[sb.Target] = []
    if url is not None:
        targets.append(lambda: sb.url_target(url, name, run_label, token))
    else:
        settings = sb.StokerSettings(
            model=model,
            name=name,
            weights=weights,
            device=device,
            dtype=dtype,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            io_threads=io_threads,
        )
        if weights is None and not Path(model).is_file():
            typer.echo(f"note: {model} runs with random weights (no --weights given)", err=True)
        start = sb.engine_target if engine else sb.stoker_target
        targets.append(lambda: start(settings, run_label))
    if baseline_cmd is not None:
        targets.append(lambda: sb.command_target(baseline_cmd, name, baseline_label, token))
    if baseline_url is not None:
        targets.append(lambda: sb.url_target(baseline_url, name, baseline_label, token))
    source = str(images) if images is not None else f"{len(bodies)} generated JPEGs"
    sb.bench(
        targets,
        plan,
        bodies,
        out,
        images_source=source,
        per_request=images_per_request,
        progress=progress,
    )
