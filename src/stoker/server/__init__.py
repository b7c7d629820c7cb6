"""stoker's HTTP server: KServe v2 / Open Inference Protocol, a plain image endpoint, metrics.

Needs the ``server`` extra (FastAPI, uvicorn, prometheus-client, python-multipart).
"""

from stoker.server._app import create_app
from stoker.server._config import ModelConfig, ServerConfig, load_config
from stoker.server._gateway import NativeServer, serve_native

__all__ = [
    "ModelConfig",
    "NativeServer",
    "ServerConfig",
    "create_app",
    "load_config",
    "serve_native",
]
