"""Assemble and run the service: a gateway deployment (HTTP) in front of an encoder deployment (the model).

    config = ServeConfig("pkg/", replicas=2, max_batch_size=32)
    url = start(config)            # joins or starts Ray, starts Serve's HTTP proxy, deploys; returns the base URL
    ...
    stop()                         # deletes the application; shuts Ray down if start() started it

Two deployments rather than one: the gateway catches what happens to an encoder replica (a full queue, a replica
that died under a request) and answers it as JSON with a retry, which a single deployment behind Serve's proxy
cannot (the proxy answers those in plain text, or 500); and decoding scales apart from the model.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ..errors import missing_dependency
from .config import ServeConfig

log = logging.getLogger("clip_rt.serve")

APP_NAME = "clip-rt"
# The gateway holds requests while they are decoded and wait for the encoders. Its own bound sits far above the
# encoders' queue (max_queued per gateway), so a full queue is normally answered by the gateway as JSON 503; Ray's
# proxy answers beyond this bound with its own plain-text 503.
GATEWAY_ONGOING = 1024
GATEWAY_QUEUED = 1024

_started_ray = False


def build_app(config: ServeConfig) -> Any:
    """The Serve application (gateway bound to encoder) for `config`; deploy it with serve.run."""
    try:
        from ray import serve
    except ImportError:
        raise missing_dependency("ray", "serve", "clip-rt serve") from None
    from ray.serve.schema import LoggingConfig

    from .encoder import Encoder
    from .gateway import Gateway

    # A log line per request costs CPU on every replica; with config.access_log False only warnings are logged.
    logs = LoggingConfig(enable_access_log=config.access_log, log_level="INFO" if config.access_log else "WARNING")

    encoder = serve.deployment(
        name="Encoder", num_replicas=config.replicas,
        max_ongoing_requests=config.ongoing_per_replica, max_queued_requests=config.max_queued,
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus},
        health_check_period_s=2.0, health_check_timeout_s=30.0, graceful_shutdown_timeout_s=5.0,
        logging_config=logs)(Encoder)
    gateway = serve.deployment(
        name="Gateway", num_replicas=config.gateways,
        max_ongoing_requests=GATEWAY_ONGOING, max_queued_requests=GATEWAY_QUEUED,
        ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=5.0, logging_config=logs)(Gateway)
    return gateway.bind(encoder.bind(config), config)


def start(config: ServeConfig, address: str | None = None, name: str = APP_NAME, route_prefix: str = "/") -> str:
    """Deploy `config` and return its base URL once every replica is up.

    address: None starts a local Ray cluster (unless this process already is a Ray driver), else joins that one
    (clip_rt.ray.connect). Serve's HTTP proxy listens on config.host:config.port; if Serve is already running on
    the cluster, its proxy (and its port) are kept and the application is added to it.
    """
    global _started_ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    from ..ray import connect

    _started_ray = connect(address, extra="serve") or _started_ray
    from ray.serve.schema import LoggingConfig

    serve.start(http_options=HTTPOptions(host=config.host, port=config.port,
                                         request_timeout_s=config.request_timeout_s),
                logging_config=LoggingConfig(enable_access_log=config.access_log,
                                             log_level="INFO" if config.access_log else "WARNING"))
    serve.run(build_app(config), name=name, route_prefix=route_prefix, blocking=False)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}{route_prefix.rstrip('/')}"


def stop(name: str = APP_NAME) -> None:
    """Delete the application; if start() started Ray, shut Serve and Ray down as well."""
    global _started_ray
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    serve.delete(name)
    if _started_ray:
        serve.shutdown()
        ray.shutdown()
        _started_ray = False


def serve_forever(config: ServeConfig, address: str | None = None, ready: Any = None) -> None:
    """start(), print nothing, block until SIGINT or SIGTERM, then stop(). ready(url) is called once serving."""
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = start(config, address)
        if ready is not None:
            ready(url)
        while not done.wait(1.0):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop()
