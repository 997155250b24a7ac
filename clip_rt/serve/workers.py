"""How a batch reaches a model: the one thing the two runners do differently.

- LocalWorker: the model in this process (clip_rt.serve.encoder.Encoder), every call on one thread of its own, so
  an image batch, a text batch and a label-matrix build never compete for the backend's intra-op threads and the
  event loop stays free to read, decode and batch the next requests.
- RayWorker: an encoder deployment's handle (Ray Serve, `--ray-deployments 2`): a full queue or an unreachable
  deployment is a 503 the client may retry; a call whose replica died is retried on another replica.

Both offer `await worker.call(method, *args)` over Encoder's methods; LocalWorker also `worker.call_here(...)`,
the same call on the caller's thread, for a request that finds the model idle and nobody else in the service.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .limits import ApiError

log = logging.getLogger("clip_rt.serve")


class LocalWorker:
    """Encoder methods on one dedicated thread, or (call_here) on the event loop's own thread."""

    def __init__(self, encoder: Any):
        self.encoder = encoder  # clip_rt.serve.encoder.Encoder
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-rt-model")
        self._on_thread = 0  # calls handed to the model thread and not finished yet
        self.counters: dict[str, int] = {"calls_here": 0}  # model calls run on the loop's thread (see call_here)

    @property
    def idle(self) -> bool:
        """No call is on the model thread."""
        return self._on_thread == 0

    async def call(self, method: str, *args: Any) -> Any:
        self._on_thread += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, getattr(self.encoder, method),
                                                                    *args)
        finally:
            self._on_thread -= 1

    def call_here(self, method: str, *args: Any) -> Any:
        """The call on this thread (the event loop's, which it holds meanwhile). For a lone request on an idle
        model: the hop to the model thread and the loop's wake-up after it cost ~0.1-0.3 ms, a tenth of a caption's
        encoding, and nothing else is waiting for the loop."""
        self.counters["calls_here"] += 1
        return getattr(self.encoder, method)(*args)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class RayWorker:
    """Encoder methods on a Ray Serve deployment, through its handle."""

    def __init__(self, handle: Any, queued: int, retry_attempts: int):
        self.handle = handle  # DeploymentHandle of clip_rt.serve.ray_runner.EncoderDeployment
        self.queued = queued  # the deployment's max_queued_requests, for the 503's reason
        self.retry_attempts = retry_attempts
        self.counters = {"replica_losses": 0, "queue_full": 0}  # calls that met a dead replica / a full queue

    async def call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
        from ray.serve.exceptions import (BackPressureError, DeploymentUnavailableError, RayServeException,
                                          ReplicaUnavailableError)

        delay = 0.2
        for attempt in range(self.retry_attempts + 1):
            try:
                return await getattr(self.handle, method).remote(*args)
            except BackPressureError:
                self.counters["queue_full"] += 1
                raise ApiError(503, f"server busy: the encoder queue is full ({self.queued} requests waiting); retry "
                                    f"shortly", retry_after_s=1) from None
            except DeploymentUnavailableError as e:
                raise ApiError(503, f"encoder unavailable ({e}); retry shortly", retry_after_s=2) from None
            except (RayActorError, ActorUnavailableError, ReplicaUnavailableError) as e:
                self.counters["replica_losses"] += 1
                log.warning("encoder replica lost during %s (attempt %d): %s", method, attempt + 1, e)
                if attempt < self.retry_attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
            except RayTaskError as e:  # the replica raised: re-raise its own exception (a ClipRtError becomes a 400)
                cause = getattr(e, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            except RayServeException as e:  # e.g. the call was cancelled because the encoders are stopping
                raise ApiError(503, f"encoder unavailable ({type(e).__name__}: {e}); retry shortly",
                               retry_after_s=2) from None
        raise ApiError(503, "an encoder replica stopped during this request and no replacement answered yet; retry "
                            "shortly", retry_after_s=2)

    def close(self) -> None:
        pass
