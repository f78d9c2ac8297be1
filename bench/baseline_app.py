"""The bench's yardstick: a bare Flask app that answers every path and method with the
same small JSON object, served by gunicorn exactly as ``dispatch-server`` serves the
real app (one worker, gthread, the same thread count and keep-alive), so the ratio
real/baseline shows what the dispatch server's own work costs on top of the stack.

Run (from the repository root): ``python -m bench.baseline_app --port 8090 [--threads 8]``
"""

from __future__ import annotations

import argparse
from typing import Any

from flask import Flask, Response
from gunicorn.app.base import BaseApplication

from dispatch.config.settings import Settings
from dispatch.runtime.gunicorn_config import options

BODY = b'{"status":"ok","job_id":"baseline","n":1}'


def create_app() -> Flask:
    app = Flask("baseline")

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def answer(path: str) -> Response:
        return Response(BODY, 200, mimetype="application/json")

    return app


class BaselineApplication(BaseApplication):
    def __init__(self, host: str, port: int, threads: int) -> None:
        # The dispatch server's own gunicorn options, for the same host/port/threads,
        # less its hooks (they reach into the dispatch app).
        shipped = options(Settings(api_key="unused", host=host, port=port,
                                   thread_pool_size=threads))
        self.opts = {key: value for key, value in shipped.items() if not callable(value)}
        self.opts["proc_name"] = "bench-baseline"
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.opts.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app()


def main() -> None:
    parser = argparse.ArgumentParser(description="bare Flask baseline for the bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=Settings.thread_pool_size)
    args = parser.parse_args()
    BaselineApplication(args.host, args.port, args.threads).run()


if __name__ == "__main__":
    main()
