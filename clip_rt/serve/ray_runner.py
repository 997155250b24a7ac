"""The Ray Serve runner (`clip-rt serve PKG --ray [ADDRESS]`): the same routes and batching as the one-process
runner, in Ray Serve replicas, for clusters and many GPUs.

    config = ServeConfig("pkg/", replicas=2, max_batch_size=32)
    url = start(config)            # joins or starts Ray, starts Serve's HTTP proxy, deploys; returns the base URL
    ...
    stop()                         # deletes the application; shuts Serve and Ray down if start() started Ray

One deployment by default (config.ray_deployments 1): each replica parses, decodes, batches and runs its own
model, so a request crosses Serve's proxy and one replica. With 2, gateway replicas (no CPU reserved) send batches
to encoder replicas through a handle: one more hop per batch, which pays when decoding must scale apart from the
models (benchmarks/serving.py measures both). Either way a full queue is answered by the replica as JSON 503.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ..errors import InputError, missing_dependency
from .config import ServeConfig

log = logging.getLogger("clip_rt.serve")

APP_NAME = "clip-rt"
GATEWAY_QUEUED = 1024  # requests Serve's router holds for the ingress replicas beyond max_ongoing (then plain 503)

_started_ray = False


def _imports() -> None:
    for module, name in (("ray.serve", "ray"), ("fastapi", "fastapi"), ("python_multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            raise missing_dependency(name, "serve", "clip-rt serve --ray") from None


def build_app(config: ServeConfig) -> Any:
    """The Serve application for `config` (one Ingress deployment, or Ingress bound to an Encoder deployment);
    deploy it with serve.run."""
    _imports()
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from .ray_replicas import EncoderReplica, Ingress

    # A log line per request costs CPU on every replica; with config.access_log False only warnings are logged.
    logs = LoggingConfig(enable_access_log=config.access_log, log_level="INFO" if config.access_log else "WARNING")
    model_actor: dict[str, Any] = {"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus}
    common: dict[str, Any] = {"graceful_shutdown_timeout_s": config.graceful_timeout_s, "graceful_shutdown_wait_loop_s": 0.5,
              "logging_config": logs, "health_check_period_s": 2.0, "health_check_timeout_s": 30.0}
    ingress_opts: dict[str, Any] = {"max_ongoing_requests": config.ongoing(ingress=True), "max_queued_requests": GATEWAY_QUEUED}
    if config.ray_deployments == 1:
        ingress = serve.deployment(name="Ingress", num_replicas=config.replicas, ray_actor_options=model_actor,
                                   **ingress_opts, **common)(Ingress)
        return ingress.bind(config)
    encoder = serve.deployment(name="Encoder", num_replicas=config.replicas, ray_actor_options=model_actor,
                               max_ongoing_requests=config.ongoing(ingress=False),
                               max_queued_requests=config.max_queued, **common)(EncoderReplica)
    gateway = serve.deployment(name="Gateway", num_replicas=config.gateways, ray_actor_options={"num_cpus": 0},
                               **ingress_opts, **common)(Ingress)
    return gateway.bind(config, encoder.bind(config))


def start(config: ServeConfig, address: str | None = None, name: str = APP_NAME, route_prefix: str = "/",
          connected: Any = None) -> str:
    """Deploy `config` and return its base URL once every replica is up.

    address: None starts a local Ray cluster (unless this process already is a Ray driver), else joins that one
    (clip_rt.ray.connect). Serve's HTTP proxy listens on config.host:config.port (config.proxy_location: on every
    node or the head only); if Serve is already running on the cluster, its proxy (and its port) are kept and the
    application is added to it. connected() is called once this process is a Ray driver, before the deployment.
    A port in use is an InputError naming --port: checked before a local cluster starts, and Serve's own bind
    failure otherwise (the proxy binds after Ray is up, by when another process may have taken the port).
    """
    global _started_ray
    _imports()
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    from ..cluster import connect
    from .encoder import check_index

    check_index(config)  # before Ray starts: a mismatched index is refused in one line
    if address is None and not ray.is_initialized():  # a local cluster starts here; its proxy binds on this machine
        from .local import listen

        listen(config.host, config.port).close()  # a port in use: one line naming the flag, before Ray starts
    _started_ray = connect(address, extra="serve") or _started_ray
    if connected is not None:
        connected()
    try:
        serve.start(proxy_location=config.proxy_location,
                    http_options=HTTPOptions(host=config.host, port=config.port,
                                             request_timeout_s=config.request_timeout_s),
                    logging_config=LoggingConfig(enable_access_log=config.access_log,
                                                 log_level="INFO" if config.access_log else "WARNING"))
    except Exception as e:  # the proxy's bind failure reaches here wrapped in a RayTaskError
        if "Failed to bind to address" not in str(e):
            raise
        raise InputError(f"cannot listen on {config.host}:{config.port}: Ray Serve's proxy could not bind it "
                         f"(in use by another process); choose another --port or --host") from None
    serve.run(build_app(config), name=name, route_prefix=route_prefix, blocking=False)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}{route_prefix.rstrip('/')}"


def stop(name: str = APP_NAME) -> None:
    """Delete the application: its replicas stop taking requests and answer those they hold (up to
    config.graceful_timeout_s) before they exit. Then, if start() started Ray, shut Serve and Ray down, so that no
    Ray process is left (Serve's shutdown alone would stop the proxies with answers still on their way)."""
    global _started_ray
    try:
        import ray
        from ray import serve
    except ImportError:  # nothing was started
        return
    if not ray.is_initialized():
        return
    serve.delete(name)
    if _started_ray:
        serve.shutdown()
        ray.shutdown()
        _started_ray = False


def serve_forever(config: ServeConfig, address: str | None = None, ready: Any = None) -> None:
    """start(), block until SIGINT or SIGTERM, then stop(). ready(url) is called once serving.

    Ray installs its own SIGTERM handlers when this process becomes a driver (one exits 1 at once, one in Ray's
    C++ core aborts); this one is installed again right after, so SIGTERM stops as Ctrl-C does: the application
    drains, then Serve and Ray shut down."""
    _imports()  # a missing extra is one line, before anything needs stopping
    done = threading.Event()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def catch() -> None:
        for s in handlers:
            signal.signal(s, lambda *_: done.set())

    catch()
    try:
        url = start(config, address, connected=catch)
        if ready is not None and not done.is_set():
            ready(url)
        while not done.wait(0.5):
            pass
    finally:
        try:
            stop()
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
