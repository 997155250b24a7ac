"""The one-process runner (the default of `clip-rt serve`): uvicorn serving the routes, the model on its own
thread in this process, batching on the event loop.

    server = LocalServer(ServeConfig("pkg/", port=8000))   # checks the index, binds the port, loads the model
    server.run(ready=print)      # blocks; SIGTERM or Ctrl-C: stop taking connections, answer every request already
                                 # accepted (up to graceful_timeout_s), return {"accepted": N, "answered": N}
    # or, beside other work (tests): url = server.start(); ...; server.stop()
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any, Callable

from ..errors import InputError, missing_dependency
from .config import ServeConfig


def _imports() -> None:
    """ClipRtError with the install hint when uvicorn, FastAPI or python-multipart is missing."""
    for module, name in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            raise missing_dependency(name, "serve", "clip-rt serve") from None


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or InputError saying which flag to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio turns Nagle's algorithm off only on sockets whose proto is IPPROTO_TCP (0, the default,
    # would leave it on, and a response's header and body writes would then wait ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


DRAIN_READ_S = 0.25  # after a stop signal: time to read requests already written to open connections


class LocalServer:
    """`config` served by uvicorn in this process. Everything that can be refused (the index against the package,
    the port, the model) is checked in the constructor, before any request can arrive."""

    def __init__(self, config: ServeConfig):
        _imports()
        import uvicorn

        from .encoder import Encoder, check_index
        from .routes import make_app
        from .service import Service
        from .workers import LocalWorker

        self.config = config
        check_index(config)  # before the port and the model: the quickest refusal first
        self.sock = listen(config.host, config.port)
        try:
            self.service = Service(config, LocalWorker(Encoder(config)), runner="one-process", concurrency=1)
        except BaseException:
            self.sock.close()
            raise
        self.app = make_app(self.service)
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"

        class Server(uvicorn.Server):
            """uvicorn's server without re-raising the signal after a graceful stop (which would end the process
            with 128 + signal instead of 0)."""

            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: stop waiting for requests
                self.should_exit = True

            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                # Stop accepting connections, then let the loop read what clients already wrote to their open
                # connections before uvicorn closes the idle ones (a request in a socket buffer would be lost).
                for server in getattr(self, "servers", []):
                    server.close()
                await asyncio.sleep(DRAIN_READ_S)
                await super().shutdown(sockets)

        self.server = Server(uvicorn.Config(
            self.app, lifespan="off", access_log=config.access_log, log_level="info" if config.access_log else "warning",
            timeout_graceful_shutdown=math.ceil(config.graceful_timeout_s), server_header=False))
        self._thread: threading.Thread | None = None

    async def _serve(self, ready: Callable[[str], Any] | None) -> None:
        async def announce() -> None:
            while not self.server.started and not self.server.should_exit:
                await asyncio.sleep(0.01)
            if self.server.started and ready is not None:
                ready(self.url)

        waiter = asyncio.get_running_loop().create_task(announce())
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            waiter.cancel()
            await self.service.close()  # every request is answered by now; stop the batchers and the model thread
            self.sock.close()

    def run(self, ready: Callable[[str], Any] | None = None) -> dict[str, int]:
        """Serve until SIGTERM or SIGINT (from the main thread) or stop(); return the request counts."""
        # The loop uvicorn itself would run (uvloop when installed, as uvicorn.run gives the no-op floor of
        # benchmarks/serving.py): asyncio's own loop costs more per request.
        factory = self.server.config.get_loop_factory()
        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self._serve(ready))
        else:  # Python 3.10 has no asyncio.Runner
            loop = factory() if factory is not None else asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve(ready))
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        return dict(self.app.state.requests)

    def start(self, timeout_s: float = 60.0) -> str:
        """run() on a background thread (no signal handling); returns the URL once it accepts connections."""
        started = threading.Event()
        self._thread = threading.Thread(target=self.run, args=(lambda url: started.set(),), daemon=True,
                                        name="clip-rt-serve")
        self._thread.start()
        if not started.wait(timeout_s):
            raise RuntimeError(f"the server did not start within {timeout_s} s")
        return self.url

    def stop(self) -> dict[str, int]:
        """Stop a start()ed server as a signal would (answer what was accepted) and wait for it."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return dict(self.app.state.requests)
