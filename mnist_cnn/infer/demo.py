"""`mnist-demo MODEL`: a local web page to draw a digit (or drop a photo of one) and watch the net read it.

Python's own HTTP server and one self-contained page (`demo.html` beside this file: no framework, no CDN, no
fonts or scripts from anywhere else), so it installs nothing extra, works offline and is ready as soon as the
model is loaded. The page talks to one JSON endpoint:

    POST /predict   body: the image file's bytes (the canvas as PNG, or a dropped/uploaded photo)
      200 {"digit", "confidence", "probs": [10 floats], "input": the 28x28 the net saw as a PNG data URL, "ms"}
      4xx {"error": "one line"}: 422 unusable image, 413 over MAX_BYTES (refused before reading), 411, 404

Every image takes exactly `mnist-predict`'s path: `load_gray` + `to_mnist`, then `open_classifier`'s model.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import signal
import socket
import socketserver
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import numpy as np

from mnist_cnn.cli import UserError
from mnist_cnn.infer import first_line

PROG = "mnist-demo"
PAGE = Path(__file__).with_name("demo.html")
MAX_BYTES = 20 << 20  # phone photos are 2-12 MB; bigger bodies are refused from Content-Length, never read
DRAIN_BYTES = 64 << 20  # of a refused body, read and drop this much so the client gets the 413, not a reset
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# The page may load nothing from anywhere: no CDN, fonts or telemetry, even if someone edits it to try.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Demo:
    """The model, loaded once, and the page. One prediction at a time: that bounds memory to one decoded photo,
    and torch already spreads a single prediction over every core."""

    def __init__(self, model_path: Path) -> None:
        from mnist_cnn.infer.classifiers import open_classifier

        self.model = open_classifier(model_path)
        self.model.logits(np.zeros((1, 28, 28), dtype=np.uint8))  # warm up: torch's first call is the slow one
        page = PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(model_path.name))
        self.page = page.replace("{{MAX_BYTES}}", str(MAX_BYTES)).encode()
        self.lock = threading.Lock()

    def predict(self, data: bytes) -> dict[str, Any]:
        """Image file bytes -> prediction; UserError (one line) for anything unusable."""
        from PIL import Image

        from mnist_cnn.infer.classifiers import softmax
        from mnist_cnn.infer.preprocess import load_gray, to_mnist

        with self.lock:
            start = time.perf_counter()
            image = to_mnist(load_gray(io.BytesIO(data)))
            mid = time.perf_counter()
            probs = softmax(self.model.logits(image[None]))[0]
            end = time.perf_counter()
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        digit = int(np.argmax(probs))
        return {
            "digit": digit,
            "confidence": round(float(probs[digit]), 6),
            "probs": [round(float(p), 6) for p in probs],
            "input": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
            "ms": {"preprocess": round((mid - start) * 1e3, 1), "model": round((end - mid) * 1e3, 1)},
        }


class Server(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl-C never waits for a browser's idle connection
    demo: Demo

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN: a DNS query that can hang for seconds offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class Server6(Server):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    server_version = PROG
    head_only = False

    def do_HEAD(self) -> None:
        self.head_only = True
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self.reply(HTTPStatus.OK, cast(Server, self.server).demo.page, "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self.reply(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self.reply_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/predict":
            self.reply_json(HTTPStatus.NOT_FOUND, {"error": "POST the image to /predict"})
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or self.headers.get("Transfer-Encoding"):
            self.refuse(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length", DRAIN_BYTES)
            return
        size = int(length)
        if size > MAX_BYTES:
            self.refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"image too large ({size / 2**20:.1f} MB, "
                        f"the limit is {MAX_BYTES >> 20} MB)", size)  # fmt: skip
            return
        data = self.rfile.read(size)
        if not data or len(data) < size:
            self.reply_json(HTTPStatus.BAD_REQUEST, {"error": "empty or incomplete upload"})
            return
        try:
            result = cast(Server, self.server).demo.predict(data)
        except UserError as err:
            self.reply_json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(err)})
            return
        except Exception as err:  # a bug, not the user's doing: say so in the page, traceback here, keep serving
            traceback.print_exc()
            self.reply_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"mnist-demo failed: {first_line(err)}"})
            return
        self.reply_json(HTTPStatus.OK, result)

    def refuse(self, status: HTTPStatus, message: str, size: int) -> None:
        """Answer without reading the body, then drop a bounded part of it: closing on unread data sends a reset,
        and a client still sending (curl, Python's http.client) would get that instead of the answer."""
        self.close_connection = True
        self.reply_json(status, {"error": message})
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2)
            left = min(size, DRAIN_BYTES)
            while left > 0 and (chunk := self.connection.recv(min(left, 1 << 20))):
                left -= len(chunk)
        except OSError:
            pass

    def reply_json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self.reply(status, json.dumps(body).encode(), "application/json")

    def reply(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not self.head_only:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Only what the operator should see: not every page load, nor every scribble the net could not read.
        if isinstance(code, int) and code >= 400 and code != HTTPStatus.UNPROCESSABLE_ENTITY:
            super().log_request(code, size)


def url(host: str, port: int) -> str:
    """The address to open: a wildcard bind is reached through loopback on this machine."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `docker stop` (SIGTERM) shuts down like Ctrl-C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a web page where you draw a digit (or drop a photo of one) and see what the net reads, "
        "the 28x28 image it was given and all ten probabilities. Runs offline; Ctrl-C stops it.",
    )
    parser.add_argument("model", type=Path, help="a training checkpoint (.ckpt) or an mnist-export model (.onnx)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (7860; 0 picks a free one)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, _stop)
    try:
        try:
            server = (Server6 if ":" in args.host else Server)((args.host, args.port), Handler)
        except (OSError, OverflowError) as err:
            why = getattr(err, "strerror", None) or err
            parser.exit(2, f"{PROG}: error: cannot listen on {args.host}:{args.port}: {why}\n")
        with server:
            try:
                server.demo = Demo(args.model)
            except UserError as err:
                parser.exit(2, f"{PROG}: error: {err}\n")
            if args.host not in LOOPBACK:
                print(f"{PROG}: listening on {args.host}: anyone who can reach this machine can use the demo")
            took = time.perf_counter() - started
            where = url(args.host, server.server_port)
            print(f"{PROG}: serving {args.model.name} on {where} (loaded in {took:.1f} s; Ctrl-C stops it)", flush=True)
            server.serve_forever()
    except KeyboardInterrupt:
        print(f"{PROG}: stopped", flush=True)


if __name__ == "__main__":
    main()
