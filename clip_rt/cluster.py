"""Joining or starting a Ray cluster (the `serve` and `scale` extras): `connect`, shared by serve/ and scale/.

`import clip_rt.cluster` does not import Ray; connect() does, and says which extra to install without it. The public
name is clip_rt.ray.connect (clip_rt/ray.py re-exports it); this module sits below serve/ and scale/, which both
use it, so that neither imports the clip_rt.ray facade that re-exports them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import missing_dependency

# A local cluster started here stays small: this runtime shares its machine with the work it serves.
LOCAL_OBJECT_STORE_BYTES = 1 << 30  # Ray's shared-memory object store for a local cluster (Ray's default: 30% of RAM)

# Ray Serve's request-path settings that RAY_SERVE_THROUGHPUT_OPTIMIZED=1 turns on (Ray >= 2.56), except direct
# ingress (a port per replica): user code on the replica's own event loop, no separate router loop, gRPC between
# replicas, buffered request logs. Measured on the 2-core dev machine: a request through Serve's proxy, an ingress
# replica and one more deployment cost ~21 ms of CPU instead of ~30 ms. Given to this driver's jobs (runtime_env);
# a variable already set in the environment wins.
SERVE_FAST_PATH = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
                   "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1", "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000"}


def connect(address: str | None = None, *, num_cpus: int | None = None, object_store_bytes: int | None = None,
            extra: str = "scale") -> bool:
    """Make this process a Ray driver. address None starts a fresh local cluster (num_cpus: default all cores;
    no dashboard; a 1 GiB object store), "auto" joins the cluster `ray start` runs on this machine, and
    "HOST:PORT" or "ray://HOST:PORT" joins that one. Returns True when Ray was started or joined here (the caller
    then calls ray.shutdown()), False when this process already was a driver."""
    try:
        import ray
    except ImportError:
        raise missing_dependency("ray", extra, "running on Ray") from None
    if ray.is_initialized():
        return False
    env = {k: v for k, v in SERVE_FAST_PATH.items() if k not in os.environ}
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": False,
                             "runtime_env": {"env_vars": env}}
    if address is None:
        # A private cluster of this process: Ray's notice that it enabled token authentication (its default, kept)
        # is noise on every start here; the logger is restored at once.
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        notice.setLevel(logging.ERROR)
        try:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                     object_store_memory=object_store_bytes or LOCAL_OBJECT_STORE_BYTES, **quiet)
        finally:
            notice.setLevel(level)
    else:
        quiet.pop("include_dashboard")  # the cluster's own setting
        ray.init(address=address, **quiet)
    return True
