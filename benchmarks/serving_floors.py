"""The stacks' floors for benchmarks/serving.py: HTTP servers whose handler does no work and returns 512 floats.

    python benchmarks/serving_floors.py asgi PORT        # uvicorn + FastAPI in one process
    python benchmarks/serving_floors.py ray PORT         # Ray Serve, one deployment (a local cluster)
    python benchmarks/serving_floors.py ray2 PORT        # Ray Serve, gateway -> encoder (one more hop)

Each answers POST /embed/text and POST /embed/image (body read and dropped) and GET /healthz, runs until SIGTERM
or SIGINT, and stops what it started. They are configured as clip-rt serve configures its own runner (the same
uvicorn settings and socket; Ray with clip_rt.ray.connect and SERVE_FAST_PATH, no access log).
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time, in Ray's replicas too.
import signal
import sys
import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ANSWER = {"embeddings": [[0.044] * 512]}  # the size of a ViT-B/32 answer


def noop_app(encoder: Any = None) -> FastAPI:
    """The no-op routes; with `encoder` (a Ray Serve handle) each asks it for the floats (one more hop)."""
    app = FastAPI()

    async def answer(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(ANSWER if encoder is None else {"embeddings": await encoder.embed.remote()})

    app.post("/embed/text")(answer)
    app.post("/embed/image")(answer)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


def run_asgi(port: int) -> None:
    import uvicorn

    from clip_rt.serve.local import listen

    sock = listen("127.0.0.1", port)
    uvicorn.Server(uvicorn.Config(noop_app(), lifespan="off", access_log=False, log_level="warning")).run(
        sockets=[sock])


def noop_ray_app(deployments: int = 1) -> Any:
    """The no-op Ray Serve application (bound, for serve.run): one ingress deployment, or ingress -> encoder. Its
    replicas reserve no CPU, so that it also fits beside a clip-rt application in one cluster (benchmarks/serving.py
    deploys it next to `--ray`'s, on the same proxy, to pair their requests); the reservation is Ray's bookkeeping
    only and changes no thread or process."""
    from ray import serve
    from ray.serve.schema import LoggingConfig

    logs = LoggingConfig(enable_access_log=False, log_level="WARNING")
    opts: dict[str, Any] = {"max_ongoing_requests": 1024, "logging_config": logs, "ray_actor_options": {"num_cpus": 0}}

    @serve.deployment(**opts)
    class Encoder:
        async def embed(self) -> list[list[float]]:
            return ANSWER["embeddings"]

    @serve.deployment(**opts)
    @serve.ingress()
    class Ingress:
        def __init__(self, encoder: Any = None):
            self.encoder = encoder

        def __serve_build_asgi_app__(self) -> FastAPI:
            return noop_app(self.encoder)

    return Ingress.bind(Encoder.bind()) if deployments == 2 else Ingress.bind()


def run_ray(port: int, deployments: int) -> None:
    from ray import serve
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    import ray
    from clip_rt.ray import connect

    done = threading.Event()
    connect(None, extra="serve")
    for s in (signal.SIGINT, signal.SIGTERM):  # after connect: Ray installs its own
        signal.signal(s, lambda *_: done.set())
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=port),
                logging_config=LoggingConfig(enable_access_log=False, log_level="WARNING"))
    serve.run(noop_ray_app(deployments), blocking=False)
    print("ready", flush=True)
    while not done.wait(0.5):
        pass
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "asgi":
        run_asgi(port)
    else:
        run_ray(port, 2 if kind == "ray2" else 1)
