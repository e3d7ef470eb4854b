"""Headless Chromium driven through the DevTools protocol on a pipe (`--remote-debugging-pipe`), stdlib only.

Why not Selenium: it would add about ten pinned packages and a chromedriver that has to match the browser.
The protocol itself needs neither, opens no port, and gives what the demo's test needs: trusted input events
(`Input.dispatchMouseEvent` makes real pointer events), file inputs, drag and drop, screenshots, and every
request the page makes. Messages are JSON, NUL-terminated: commands on the browser's fd 3, replies on fd 4.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers' /dev/shm is 64 MB
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",  # no update checks or field trials: the test runs offline
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Chromium:
    """One headless browser with one page (`width` x `height` CSS px at 1 device px each)."""

    def __init__(self, exe: str, profile: Path, width: int = 900, height: int = 700) -> None:
        to_browser, self._to = os.pipe()
        self._from, from_browser = os.pipe()

        def protocol_fds() -> None:  # in the child: the pipe ends on the fixed fds 3 and 4 the protocol uses
            a = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)  # above 4 first: dup2 must not clobber one
            b = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = profile / "chromium.log"
        profile.mkdir(parents=True, exist_ok=True)
        args = [exe, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*args, "about:blank"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=protocol_fds, close_fds=False,  # every other fd is close-on-exec already
            )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._out = os.fdopen(self._to, "wb")
        self._ids = itertools.count(1)
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.session: str | None = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from, 1 << 16):
            *messages, buf = (buf + chunk).split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    self._replies.put(message)
                else:
                    self.events.append(message)
        self._replies.put(None)  # the browser is gone

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """One protocol command; page commands go to the page's session, Target.* and Browser.* to the browser."""
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        self._out.write(json.dumps(message).encode() + b"\0")
        self._out.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{method}: no reply in {timeout} s") from None
            if reply is None:
                raise RuntimeError(f"Chromium exited; its log ends:\n{self.log.read_text()[-3000:]}")
            if reply["id"] == message["id"]:
                break
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def js(self, expression: str, timeout: float = 60) -> Any:
        """Evaluate in the page (promises awaited) and return the value as JSON."""
        kw = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.call("Runtime.evaluate", timeout=timeout, **kw)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"{expression}: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait(self, condition: str, timeout: float = 30) -> Any:
        """Wait in the page until the JS expression is truthy (polled every few ms there, not over the pipe)."""
        poll = f"""new Promise((ok, fail) => {{
            const start = performance.now();
            (function poll() {{
                const value = ({condition});
                if (value) ok(value);
                else if (performance.now() - start > {timeout * 1000}) fail(new Error("timed out"));
                else setTimeout(poll, 2);
            }})();
        }})"""
        return self.js(poll, timeout=timeout + 10)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def centre(self, selector: str) -> tuple[float, float]:
        box = self.js(f"JSON.stringify(document.querySelector({json.dumps(selector)}).getBoundingClientRect())")
        rect = json.loads(box)
        return rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        """A mouse event as the OS would send it (Chromium turns it into pointer and mouse events)."""
        button = "left" if kind != "mouseMoved" or buttons else "none"
        press = {"clickCount": 1} if kind != "mouseMoved" else {}
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, buttons=buttons, **press)

    def press_and_drag(self, points: list[tuple[float, float]]) -> None:
        """Left button down on the first point and moved through the rest; the caller releases it."""
        (x, y), *rest = points
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, buttons=1)
        for x, y in rest:
            self.mouse("mouseMoved", x, y, buttons=1)

    def click(self, selector: str) -> None:
        x, y = self.centre(selector)
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, buttons=1)
        self.mouse("mouseReleased", x, y)

    def touch(self, points: list[tuple[float, float]]) -> None:
        """One finger down on the first point, along the rest, lifted at the last."""
        (x, y), *rest = points
        self.call("Input.dispatchTouchEvent", type="touchStart", touchPoints=[{"x": x, "y": y}])
        for x, y in rest:
            self.call("Input.dispatchTouchEvent", type="touchMove", touchPoints=[{"x": x, "y": y}])
        self.call("Input.dispatchTouchEvent", type="touchEnd", touchPoints=[])

    def choose_file(self, selector: str, path: Path) -> None:
        """What the file dialog does: set an <input type=file>'s file (fires its change event)."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def drop_file(self, x: float, y: float, path: Path) -> None:
        """Drag a file from outside the browser and drop it at (x, y)."""
        data = {"items": [], "files": [str(path)], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            self.call("Input.dispatchDragEvent", type=kind, x=x, y=y, data=data)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def requested(self) -> list[str]:
        """Every URL the page has asked for so far."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.proc.wait(timeout=10)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait()
        self._out.close()
