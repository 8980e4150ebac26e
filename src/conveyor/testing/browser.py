"""A small headless-Chromium driver over the Chrome DevTools Protocol, for tests and
benchmarks that open the dashboard in a real browser.

It starts ``chromium --headless=new`` with a throwaway profile, attaches to one page
target over a websocket (aiohttp's client) and offers :meth:`Browser.goto`,
:meth:`Browser.evaluate`, :meth:`Browser.screenshot` and the JavaScript errors seen so
far (:attr:`Browser.errors`). Only the chromium process it started is ever stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


class BrowserError(RuntimeError):
    """Chromium could not be started, or a DevTools command failed."""


def chromium_path() -> str | None:
    """The chromium executable on ``PATH`` (Debian's ``chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium process and one page, driven through DevTools.

    ``async with Browser() as b: await b.goto(url); await b.evaluate("1 + 1")``.
    :attr:`errors` collects uncaught exceptions (``Runtime.exceptionThrown``),
    ``console.error`` calls and error-level log entries (failed loads, CSP, ...).
    """

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900) -> None:
        self.executable = executable or chromium_path()
        self.width = width
        self.height = height
        #: human-readable descriptions of every JavaScript error seen on the page
        self.errors: list[str] = []
        #: the chromium process's pid once started
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._profile: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr_drain: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._load_events: asyncio.Queue[None] = asyncio.Queue()

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self, timeout: float = 30.0) -> None:
        """Launch chromium, attach to a fresh page and enable Runtime, Log and Page."""
        if self.executable is None:
            raise BrowserError("chromium is not installed")
        self._profile = tempfile.mkdtemp(prefix="conveyor-chromium-")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.executable,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--metrics-recording-only",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, so close() gets helpers too
            )
            self.pid = self._proc.pid
            browser_ws = await asyncio.wait_for(self._read_ws_url(), timeout)
            self._stderr_drain = asyncio.create_task(self._drain_stderr())
            http_base = "http://" + browser_ws.split("/")[2]
            self._session = aiohttp.ClientSession()
            page_ws = await self._page_target(http_base)
            self._ws = await self._session.ws_connect(page_ws, max_msg_size=0)
            self._reader = asyncio.create_task(self._read_loop())
            for domain in ("Runtime", "Log", "Page"):
                await self.send(f"{domain}.enable")
        except BaseException:
            await self.close()
            raise

    async def _read_ws_url(self) -> str:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                raise BrowserError("chromium exited before DevTools started listening")
            m = _LISTENING.search(line)
            if m:
                return m.group(1).decode()

    async def _drain_stderr(self) -> None:
        # chromium keeps logging to stderr; a full pipe would block it
        assert self._proc is not None and self._proc.stderr is not None
        while await self._proc.stderr.read(65536):
            pass

    async def _page_target(self, http_base: str) -> str:
        assert self._session is not None
        async with self._session.get(http_base + "/json/list") as r:
            targets = await r.json(content_type=None)
        for t in targets:
            if t.get("type") == "page" and "webSocketDebuggerUrl" in t:
                return str(t["webSocketDebuggerUrl"])
        async with self._session.put(http_base + "/json/new?about:blank") as r:
            return str((await r.json(content_type=None))["webSocketDebuggerUrl"])

    async def _read_loop(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self._on_event(data.get("method", ""), data.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrowserError("DevTools connection closed"))
        self._pending.clear()

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            text = exc.get("description") or details.get("text", "exception")
            self.errors.append(f"exception: {text} at {details.get('url', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.errors.append("console.error: " + " ".join(args))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".strip())
        elif method == "Page.loadEventFired":
            self._load_events.put_nowait(None)

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its ``result`` (raise on an error)."""
        if self._ws is None:
            raise BrowserError("browser is not started")
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        """Navigate the page to ``url`` and wait for its load event."""
        while not self._load_events.empty():
            self._load_events.get_nowait()
        reply = await self.send("Page.navigate", url=url)
        if reply.get("errorText"):
            raise BrowserError(f"navigating to {url}: {reply['errorText']}")
        await asyncio.wait_for(self._load_events.get(), timeout)

    async def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its JSON value
        (promises are awaited); a thrown exception raises :class:`BrowserError`."""
        reply = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"evaluating {expression!r}: {text}")
        return reply.get("result", {}).get("value")

    async def screenshot(self, path: str | os.PathLike[str]) -> Path:
        """Save a PNG of the page's viewport to ``path`` (parents are created)."""
        reply = await self.send("Page.captureScreenshot", format="png")
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(reply["data"]))
        return out

    async def close(self) -> None:
        """Close the DevTools connection, stop this chromium (its process group) and
        remove the temporary profile. Safe to call more than once."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self.send("Browser.close", timeout=5.0)
            await self._ws.close()
            self._ws = None
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5.0)
            self._reader = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            # helpers (zygote, renderer) share the group; none may outlive the browser
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._stderr_drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_drain, 5.0)
            self._stderr_drain = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None
