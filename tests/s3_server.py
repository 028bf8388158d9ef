"""moto's S3 server on 127.0.0.1 behind a counter of the objects it serves (tests and bench/cache_bench.py).

The server is moto's own WSGI app, as `moto.server.ThreadedMotoServer` runs it; the wrapper counts GET requests
and body bytes per object path, and can serve bodies slowly, so that a download can be killed halfway.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager

__all__ = ["CountingS3", "counting_s3"]


class CountingS3:
    """WSGI middleware: GET requests and bytes served per path; `slow` seconds of sleep per 16 KiB when set."""

    def __init__(self, app):
        self.app = app
        self.gets: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.slow = 0.0
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.gets.clear()
            self.bytes.clear()

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET":
            return body
        path = environ["PATH_INFO"]
        data = b"".join(body)
        with self.lock:
            self.gets[path] += 1
            self.bytes[path] += len(data)
        if not self.slow:
            return [data]
        return self._trickle(data, self.slow)

    @staticmethod
    def _trickle(data: bytes, pause: float):
        for start in range(0, len(data), 1 << 14):
            time.sleep(pause)
            yield data[start : start + (1 << 14)]


@contextmanager
def counting_s3():
    """Starts the server, points boto/s3fs at it through the environment (inherited by subprocesses)."""
    import fsspec
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    counter = CountingS3(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{server.server_address[1]}")  # fmt: skip
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        yield counter, fsspec.filesystem("s3")
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        os.environ.clear()
        os.environ.update(saved)
        server.shutdown()
        thread.join()
