"""Requests the native front forwards, run through the FastAPI application over ASGI.

An answer the application sends in one message leaves whole. One sent in several (a
``StreamingResponse``: server-sent events of generated tokens) leaves in pieces as they come, in
chunked transfer coding. The pieces of all streams go to the native server in one call per turn
of the event loop: when a generation step hands a token to every running stream, the streams'
events of that step cost one native call, and the socket writes happen on the native I/O
threads, not on this loop. A client that leaves is reported by the native server; the
application sees it as ``http.disconnect`` and stops generating for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp

__all__ = ["Forwarder"]

log = logging.getLogger("stoker.server")

# The native server writes these itself; an application's own copies would be duplicates.
_HOP_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "keep-alive"})

Piece = tuple[int, bytes, bool]


class Forwarder:
    """Runs forwarded requests on one event loop and hands their answers to ``gateway``."""

    def __init__(self, app: ASGIApp, gateway: Any, server: tuple[str, int]) -> None:
        self._app = app
        self._gateway = gateway
        self._server = server
        self._tasks: set[asyncio.Task[None]] = set()
        self._gone: dict[int, asyncio.Future[None]] = {}
        self._pieces: list[Piece] = []

    def dispatch(self, requests: list[tuple[Any, ...]], abandoned: list[int]) -> None:
        """On the loop: starts the requests, then tells those in flight whose clients left."""
        loop = asyncio.get_running_loop()
        for item in requests:
            # Made here, not in the task: a client may be gone by the time its task first runs.
            gone = self._gone[item[0]] = loop.create_future()
            task = loop.create_task(self._call(gone, *item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for token in abandoned:
            left = self._gone.get(token)
            if left is not None and not left.done():
                left.set_result(None)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _piece(self, token: int, data: bytes, last: bool) -> None:
        if not self._pieces:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pieces.append((token, data, last))

    def _flush(self) -> None:
        pieces, self._pieces = self._pieces, []
        self._gateway.respond_pieces(pieces)

    async def _call(
        self,
        gone: asyncio.Future[None],
        token: int,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        status = 500
        reply_headers: list[tuple[str, str]] = []
        started = ended = False
        try:
            # Latin-1 maps every octet to one character, so no request target can fail here;
            # the application sees the percent-decoded path as ASGI servers give it.
            target = path.decode("latin-1")
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": method.decode("latin-1"),
                "scheme": "http",
                "path": unquote(target, encoding="utf-8", errors="replace"),
                "raw_path": path,
                "query_string": query,
                "root_path": "",
                "headers": headers,
                "server": self._server,
                "client": None,
            }
            delivered = False

            async def receive() -> dict[str, Any]:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.shield(gone)
                return {"type": "http.disconnect"}

            async def send(message: Mapping[str, Any]) -> None:
                nonlocal status, started, ended
                if ended:
                    return
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    for k, v in message.get("headers", []):
                        name = k.decode("latin-1").lower()
                        if name not in _HOP_HEADERS:
                            reply_headers.append((name, v.decode("latin-1")))
                    return
                if message["type"] != "http.response.body":
                    return
                data = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if started:
                    self._piece(token, data, not more)
                    ended = not more
                elif more:
                    self._gateway.respond_start(token, status, reply_headers, data)
                    started = True
                else:
                    self._gateway.respond(token, status, reply_headers, data)
                    ended = True

            await self._app(scope, receive, send)
        except Exception:
            log.exception("the application failed on %r %r", method, path)
            if not started and not ended:
                status, reply_headers = 500, [("content-type", "application/json")]
                self._gateway.respond(token, status, reply_headers, b'{"error": "internal error"}')
                ended = True
        finally:
            del self._gone[token]
            gone.cancel()
            # Every forwarded request is answered exactly once, whatever happened above: a
            # stream the application left unfinished ends where it stopped.
            if started and not ended:
                self._piece(token, b"", True)
            elif not ended:
                self._gateway.respond(token, status, reply_headers, b"")
