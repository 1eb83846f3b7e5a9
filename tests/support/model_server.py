"""A stand-in for a model server process that raygate supervises, fast to start and to kill.

    python -m tests.support.model_server PORT [--hold SECONDS] [--die-on-generation SIGNAL]

Speaks the two routes the supervisor and the OpenAI-compatible backend use,
``GET /v1/models`` and ``POST /v1/chat/completions``; prints a line per
request, so a test sees in the output when a call is in flight. With
``--die-on-generation`` the process kills itself with that signal on its
first generation, as a server built for another CPU does. ``--hold`` delays
every answer but the supervisor's one-token readiness check.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from providers.supervisor import Exit, LoopbackServer


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "stand-in",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def serve(port: int, hold: float, die_on_generation: str | None) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            print(f"POST {self.path}", flush=True)
            if die_on_generation:
                os.kill(os.getpid(), signal.Signals[die_on_generation])
            if body.get("max_tokens") != 1:  # the supervisor's readiness check is not held
                time.sleep(hold)
            self._reply(answer("ok"))

        def _reply(self, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    print(f"listening on 127.0.0.1:{port}", flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


class StandInServer(LoopbackServer):
    """A LoopbackServer running this module, for the supervisor's tests."""

    kind = "stand-in server"
    model = "stand-in"

    def __init__(self, *, hold: float = 0.0, die_on_generation: str | None = None) -> None:
        super().__init__()
        self.hold = hold
        self.die_on_generation = die_on_generation

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "tests.support.model_server", str(self.port)]
        command += ["--hold", str(self.hold)]
        if self.die_on_generation:
            command += ["--die-on-generation", self.die_on_generation]
        return command

    def hint(self, exit: Exit) -> str:
        return "the stand-in's hint" if exit.returncode == -signal.SIGSEGV else ""


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--die-on-generation", choices=[s.name for s in signal.Signals])
    args = parser.parse_args()
    serve(args.port, args.hold, args.die_on_generation)
