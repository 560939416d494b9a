"""Helpers of the alerting end-to-end tests: a local HTTP receiver and the runbook's anchors.

- :class:`Receiver`: an ``http.server`` in a thread that records every POST (path, JSON body),
  standing in for the generic webhook, Slack and PagerDuty.
- :func:`github_anchors`: the fragments GitHub gives the headings of a Markdown file.

The daemons (Prometheus, Alertmanager, the collector) are started with :mod:`tests.daemons`.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# --- the local receiver -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    body: Any
    """The JSON body (the raw text when it is not JSON)."""


class Receiver:
    """Records POSTs to any path on ``127.0.0.1`` and answers 200."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
                try:
                    body: Any = json.loads(raw)
                except json.JSONDecodeError:
                    body = raw
                with receiver._lock:
                    receiver._requests.append(Request(self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, path: str | None = None) -> list[Request]:
        """The requests so far (to ``path`` only, if given), in arrival order."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# --- the runbook --------------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading's text."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def github_anchors(markdown: str) -> set[str]:
    """The anchors of every ATX heading (``#`` to ``######``) outside fenced code blocks."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            anchors.add(github_anchor(match.group(1)))
    return anchors
