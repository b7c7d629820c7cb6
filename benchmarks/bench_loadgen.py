"""Headroom of `stoker bench`'s load generator: its rate against a trivial server, against the
rate it measures on stoker.

The trivial server reads each request (headers and body) and answers a canned 200 with a
Server-Timing header, in processes of its own (SO_REUSEPORT). The generator sends it the same
KServe requests that it sends stoker, so per request it does the same work. Printed: both rates,
the generator's CPU use, and the ratios, where the generator's capacity per core (requests per
second of its own CPU time) is the figure that does not depend on how fast the trivial server is.

    python benchmarks/bench_loadgen.py                    # 2-core CPU machine
    python benchmarks/bench_loadgen.py --connections 256 --gen-threads 2 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from stoker import _native, bench
from stoker.bench._targets import Endpoint, free_port, kserve_request, wait_ready

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Server-Timing: total;dur=0.001\r\n\r\n{}"
)


class Responder(asyncio.Protocol):
    """Answers every complete request at once; request bodies are counted, never kept."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.head = bytearray()
        self.body_left = -1  # -1: reading a header block

    def data_received(self, data: bytes) -> None:
        answers = 0
        view = memoryview(data)
        while view:
            if self.body_left >= 0:
                n = min(self.body_left, len(view))
                self.body_left -= n
                view = view[n:]
                if self.body_left == 0:
                    answers += 1
                    self.body_left = -1
                continue
            self.head += view
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for line in bytes(self.head[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            view = memoryview(bytes(self.head[end + 4 :]))
            self.head = bytearray()
            if length:
                self.body_left = length
            else:
                answers += 1
        if answers:
            self.transport.write(RESPONSE * answers)


def serve(port: int) -> None:
    """One worker; it also answers the readiness probe (any request gets the canned 200)."""

    async def main() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        server = await asyncio.get_running_loop().create_server(Responder, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


@contextlib.contextmanager
def trivial_server(workers: int) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__)), "--serve", str(port)]
    procs = [subprocess.Popen(cmd) for _ in range(workers)]
    try:
        wait_ready("127.0.0.1", port, 30.0, alive=lambda: all(p.poll() is None for p in procs))
        yield port
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def drive(port: int, requests: list[bytes], args: argparse.Namespace) -> dict[str, float]:
    gen = _native.LoadGenerator(
        requests=requests,
        port=port,
        connections=args.connections,
        threads=args.gen_threads,
        warmup_s=args.warmup,
        duration_s=args.seconds,
    )
    gen.start()
    r = gen.wait()
    ok = r["statuses"].get(200, 0)
    return {"rate": ok / r["elapsed_s"], "gen_cores": r["cpu_s"] / r["elapsed_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, default=64, help="against the trivial server")
    p.add_argument("--stoker-connections", type=int, default=16)
    p.add_argument("--gen-threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="trivial server processes")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    images = bench.load_images(None, generated=8)
    print(f"{os.cpu_count()} CPUs; {len(images)} generated JPEGs, one per KServe request")
    with trivial_server(args.workers) as port:
        endpoint = Endpoint("127.0.0.1", port, "tiny", "trivial", "trivial server")
        trivial = drive(port, [kserve_request([i], endpoint) for i in images], args)
    capacity = trivial["rate"] / max(trivial["gen_cores"], 1e-9)
    print(
        f"trivial server ({args.workers} process(es)), {args.connections} connections: "
        f"{trivial['rate']:9.0f} req/s, generator {trivial['gen_cores']:.2f} cores "
        f"= {capacity:.0f} req/s per generator core"
    )
    with bench.stoker_target(bench.StokerSettings(), "stoker") as endpoint:
        args.connections = args.stoker_connections
        measured = drive(endpoint.port, [kserve_request([i], endpoint) for i in images], args)
    print(
        f"stoker (TinyCNN, random weights), {args.stoker_connections} connections: "
        f"{measured['rate']:9.0f} req/s, generator {measured['gen_cores']:.2f} cores"
    )
    print(
        f"headroom: trivial / stoker rate {trivial['rate'] / measured['rate']:.1f}x; "
        f"generator capacity per core / stoker rate {capacity / measured['rate']:.1f}x"
    )


if __name__ == "__main__":
    main()
