"""The app under plain uvicorn in this process (a background thread): fast tests, and the baseline
the Ray Serve deployment is measured against."""

from __future__ import annotations

import threading
import time

from .._net import free_port

__all__ = ["LocalServer", "free_port"]


class LocalServer:
    """``with LocalServer(app) as url: ...``: uvicorn on ``host:port`` (127.0.0.1, a free port by default)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level,
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="brainstore-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > timeout:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
