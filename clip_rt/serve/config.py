"""What `clip-rt serve` runs: the package, the backend, the batching, the limits, and the Ray Serve settings used
with --ray. No Ray here."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends import BACKENDS
from ..contract import PRECISIONS
from ..errors import InputError

PROXY_LOCATIONS = ("EveryNode", "HeadOnly")  # Ray Serve's ProxyLocation values that serve HTTP
RAY_DEPLOYMENTS = (1, 2)  # 1: one deployment parses, batches and runs the model; 2: gateway -> encoder


@dataclass(frozen=True)
class ServeConfig:
    """One served package. Every limit is finite: the service never builds an unbounded backlog.

    One process (clip_rt.serve.local) or Ray Serve (clip_rt.serve.ray_runner) run the same routes and the same
    batching (clip_rt.serve.service); the fields from `replicas` to `proxy_location` matter only on Ray.
    """

    package: str  # model package folder, readable at the same path on every node that runs a replica
    backend: str = "onnxruntime"  # clip_rt.load backend
    precision: str = "fp32"  # artifact precision
    device: str | None = None  # clip_rt.load device; None: the backend's own ("cuda" for tensorrt, else "cpu")
    threads: int | None = None  # intra-op threads per encoder replica; None: the backend's default (all cores)
    replicas: int = 1  # Ray: replicas that hold a model
    replica_cpus: float = 1.0  # logical CPUs Ray reserves per encoder replica
    replica_gpus: float = 0.0  # GPUs Ray reserves per encoder replica; 0 on CPU (set 1 with device="cuda")
    gateways: int = 1  # Ray, 2 deployments: HTTP gateway replicas (parse, decode, batch); they reserve no CPU
    max_batch_size: int = 32  # images (or texts) per encoder call; 1 turns dynamic batching off
    batch_wait_ms: float = 10.0  # how long a batch waits for more requests after its first one arrives
    max_queued: int = 256  # requests waiting (read, decoding or queued for the model) per process or ingress
    #                        replica, beyond those the running batches hold; beyond it: JSON 503 + Retry-After
    max_ongoing: int | None = None  # Ray: requests one replica holds at once (Serve's max_ongoing_requests); None:
    #                                 the ingress takes max_queued + its batches (so its own JSON 503 answers first)
    decode_threads: int | None = None  # image decoding threads; None: one per core
    ray_deployments: int = 1  # Ray: 1 (one deployment: HTTP, batching and model) or 2 (gateway -> encoder)
    proxy_location: str = "EveryNode"  # Ray: where Serve runs its HTTP proxies (EveryNode or HeadOnly)
    graceful_timeout_s: float = 8.0  # on SIGTERM / Ctrl-C: time to answer the requests already accepted
    max_body_bytes: int = 32 << 20  # largest request body; beyond it: 413
    max_items: int = 256  # images or texts in one request; beyond it: 400
    index: str | None = None  # an index folder (clip-rt index) to serve POST /search from; None: no /search
    cache_dir: str | None = None  # label-embedding cache folder; None: $CLIP_RT_CACHE or ~/.cache/clip-rt
    host: str = "127.0.0.1"  # where the HTTP proxy listens ("0.0.0.0" for every interface)
    port: int = 8000  # HTTP port
    request_timeout_s: float = 120.0  # end-to-end limit of one HTTP request at the proxy (408 beyond it)
    retry_attempts: int = 3  # times a gateway retries a call whose encoder replica died before answering 503
    access_log: bool = False  # a log line per request in every replica's log (Ray's session logs folder)
    spinning: bool | None = None  # onnxruntime's intra-op threads (CPU). None: batches run on a model whose
    #                               threads never spin (they would take the cores decoding needs under load), and a
    #                               lone request on a second copy of it (lone_twin) whose threads spin while a call
    #                               runs and stop when it returns (no wake-up per op: as fast as in-process clip_rt;
    #                               memory: the model twice). True: one model, spinning between calls too; False: one
    #                               model, never spinning (a machine shared with other jobs)
    options: dict[str, Any] = field(default_factory=dict)  # extra clip_rt.load backend options (provider=...)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        positive = {"--replicas": self.replicas, "--gateways": self.gateways, "--max-batch-size": self.max_batch_size,
                    "--max-queued": self.max_queued, "--max-body-mb": self.max_body_bytes,
                    "--max-items": self.max_items}
        for flag, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{flag} must be a positive integer, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"--threads must be a positive integer, got {self.threads!r}")
        for flag, optional in (("--max-ongoing", self.max_ongoing), ("--decode-threads", self.decode_threads)):
            if optional is not None and (not isinstance(optional, int) or optional < 1):
                raise InputError(f"{flag} must be a positive integer, got {optional!r}")
        if self.ray_deployments not in RAY_DEPLOYMENTS:
            raise InputError(f"--ray-deployments must be 1 or 2, got {self.ray_deployments!r}")
        if self.proxy_location not in PROXY_LOCATIONS:
            raise InputError(f"--proxy-location must be one of {', '.join(PROXY_LOCATIONS)}, "
                             f"got {self.proxy_location!r}")
        if not 0 < self.graceful_timeout_s <= 600:
            raise InputError(f"graceful_timeout_s must be in (0, 600], got {self.graceful_timeout_s}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise InputError(f"--batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms}")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise InputError("--replica-cpus and --replica-gpus must be >= 0")
        if not 0 < self.port < 65536:
            raise InputError(f"--port must be in 1..65535, got {self.port}")
        if self.retry_attempts < 0:
            raise InputError(f"retry_attempts must be >= 0, got {self.retry_attempts}")
        if not (Path(self.package) / "manifest.json").is_file():
            raise InputError(f"{self.package} is not a model package (no manifest.json); make one with clip-rt export")
        if self.index is not None and not Path(self.index).is_dir():
            raise InputError(f"--index {self.index} is not an index folder; build one with clip-rt index")
        # Replicas may start on other nodes: every path they read is made absolute here, on the driver.
        object.__setattr__(self, "package", os.path.abspath(self.package))
        if self.index is not None:
            object.__setattr__(self, "index", os.path.abspath(self.index))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.path.abspath(self.cache_dir))

    @property
    def lone_twin(self) -> bool:
        """Whether a second copy of the model serves lone requests (spinning None, onnxruntime on the CPU)."""
        return self.spinning is None and self.backend == "onnxruntime" and self.device in (None, "cpu")

    def load_options(self, lone: bool = False) -> dict[str, Any]:
        """Keyword options for clip_rt.load besides backend, precision, device and threads; lone: for the twin
        that serves lone requests (see spinning)."""
        extra: dict[str, Any] = {}
        if self.backend == "onnxruntime":
            spin = self.spinning if self.spinning is not None else lone and self.lone_twin
            extra = {"spinning": spin, "spin_between_runs": self.spinning is True}
        return {**extra, **self.options}

    def ongoing(self, ingress: bool) -> int:
        """Ray Serve's max_ongoing_requests per replica: an ingress replica takes every request its own queue bound
        admits (and some to answer 503 to), an encoder replica two batches (one runs, one waits)."""
        if ingress and self.max_ongoing is not None:
            return self.max_ongoing
        return self.max_queued + 4 * self.max_batch_size + 64 if ingress else 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
