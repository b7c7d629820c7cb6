"""stoker on Ray Serve: replicas of stoker's HTTP server, each with its own engines and GPUs.

Needs the ``ray`` extra (``pip install stoker[ray]``). See docs/ray.md.
"""

from stoker.ray._deployment import (
    REPLICA_HEADER,
    default_max_ongoing_requests,
    deployment,
    gpus_needed,
    replica_config,
)

__all__ = [
    "REPLICA_HEADER",
    "default_max_ongoing_requests",
    "deployment",
    "gpus_needed",
    "replica_config",
]
