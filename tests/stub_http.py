"""What the tests' stub HTTP servers (http.server handlers) send back."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


def answer_json(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """A 200 answer carrying the JSON ``body``, with its length (so keep-alive clients can reuse
    the connection)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
