"""Headless Chromium driven through the DevTools protocol over ``--remote-debugging-pipe``.

No library: Chromium reads NUL-terminated JSON commands on fd 3 and writes replies and
events on fd 4. `Browser.page(url)` opens a tab and returns a `Page` whose `js(expr)`
evaluates an expression (awaiting promises) and returns its JSON value. Used by
``tests/serve/test_browser.py`` and ``benchmarks/serve_browser.py``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

__all__ = ["Browser", "Page", "find_chromium"]

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The Chromium executable ($CHROMIUM, else the first on PATH), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, NAMES) if p), None)


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, executable: str | None = None, *, width: int = 900, height: int = 1200):
        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError("no Chromium found (apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="mdiff-chromium-")
        self._log = open(os.path.join(self._profile, "chromium.log"), "wb")  # noqa: SIM115
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def fds():  # the child sees the pipes as fds 3 (commands) and 4 (replies)
            a, b = os.dup(to_child), os.dup(from_child)  # above 4: dup2 clobbers neither
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
                "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(args, preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=self._log)  # fmt: skip
        os.close(to_child)
        os.close(from_child)
        self._ids = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion")

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._in, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    (self._replies.__setitem__(msg["id"], msg) if "id" in msg
                     else self.events.append(msg))  # fmt: skip
                self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 60.0) -> dict:  # fmt: skip
        """Send one command and wait for its result (RuntimeError on a protocol error)."""
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: msg_id in self._replies, timeout):
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def page(self, url: str) -> Page:
        """A new tab at ``url``, loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, session["sessionId"])
        for domain in ("Page", "Runtime", "DOM"):
            page.send(f"{domain}.enable")
        page.send("Page.navigate", {"url": url})
        page.wait("document.readyState === 'complete' && !!window.mdiffStats", timeout=30)
        return page

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab, attached in flat mode."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None, **kw) -> dict:
        return self.browser.send(method, params, session=self.session, **kw)

    def js(self, expression: str, *, timeout: float = 60.0):
        """The JSON value of a JavaScript expression (promises awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True}, timeout=timeout)  # fmt: skip
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait(self, condition: str, *, timeout: float = 60.0, every: float = 0.05):
        """Poll until the expression is truthy; returns its value (TimeoutError otherwise)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(condition)
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"{condition!r} still false after {timeout} s")

    def set_files(self, selector: str, paths: list[str]) -> None:
        """Put files in an ``<input type=file>`` (fires its change event)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]})

    def screenshot(self) -> bytes:
        """A PNG of the whole page."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        return base64.b64decode(data["data"])
