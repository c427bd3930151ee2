"""A hostile HTTP server on 127.0.0.1: it serves a folder (``GET``/``HEAD`` with ``Range``) as
an object store does, except for the paths it is told to lie about, and it records the headers
of every request that reaches it.

    with Hostile(root) as server:
        server.lie("/c/0/0", declare=10**12)           # 200 (206 for a range), a 1 TB length
        server.lie("zarr.json", redirect="http://127.0.0.1:9/x")
        server.lie("/c/", status=403, body="<Error>...</Error>")
        ds = ZarrCropDataset(server.url + "/a.zarr", ...)

A declared length is followed by zeros, written until the client hangs up (or 256 MiB): what a
server that never ends its body looks like to the client.
"""

from __future__ import annotations

import dataclasses
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from lsio_torch.bench.server import ObjectHandler, byte_range

#: The most a lying body writes before the server gives up on the client.
MOST_WRITTEN = 256 << 20


@dataclasses.dataclass
class Lie:
    """What the server answers for a path containing ``match``."""

    match: str
    declare: int | None = None
    redirect: str | None = None
    status: int | None = None
    body: str = ""


@dataclasses.dataclass
class Seen:
    """One request as it reached the server."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case


class Hostile:
    """Serves ``root`` on ``http://127.0.0.1:PORT`` until :meth:`close`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.lies: list[Lie] = []
        self.seen: list[Seen] = []
        self.written = 0  # bytes of lying bodies written, in all
        self._lock = threading.Lock()
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def lie(self, match: str, **how) -> None:
        self.lies.append(Lie(match, **how))

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(ObjectHandler):
    server_owner: Hostile

    def _answer(self, body: bool) -> None:
        owner = self.server_owner
        path = self.path.split("?", 1)[0]
        with owner._lock:
            headers = {k.lower(): v for k, v in self.headers.items()}
            owner.seen.append(Seen(self.command, self.path, headers))
        lie = next((lie for lie in owner.lies if lie.match in path), None)
        if lie is not None:
            self._lie(lie, body)
            return
        file = (owner.root / path.lstrip("/")).resolve()
        if ".." in path.split("/") or not file.is_file():
            self._send(404, b"")
            return
        data = file.read_bytes()
        # A version tag, as object stores give one (the disk cache keys objects by it).
        status, headers = 200, {"ETag": f'"{file.stat().st_size:x}-{file.stat().st_mtime_ns:x}"'}
        header = self.headers.get("Range")
        if header:
            try:
                span = byte_range(header, len(data))
            except ValueError:
                self._send(416, b"")
                return
            if span is not None:
                start, end = span
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                data, status = data[start:end], 206
        self._send(status, data if body else b"", headers, length=len(data))

    def _lie(self, lie: Lie, body: bool) -> None:
        if lie.redirect is not None:
            self._send(302, b"", {"Location": lie.redirect})
            return
        if lie.status is not None:
            self._send(lie.status, lie.body.encode(), {"Content-Type": "application/xml"})
            return
        declared = lie.declare or 0
        header = self.headers.get("Range")
        self.send_response(206 if header else 200)
        if header:
            # The range the client asked for, as an honest server names it; only the length
            # lies.
            file = self.server_owner.root / self.path.split("?", 1)[0].lstrip("/")
            size = file.stat().st_size if file.is_file() else declared
            start, end = byte_range(header, size) or (0, size)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        if not body:
            return
        block = bytes(64 << 10)
        written = 0
        try:
            while written < min(declared, MOST_WRITTEN):
                self.wfile.write(block)
                written += len(block)
        except OSError:
            pass  # the client hung up: what a careful one does
        finally:
            with self.server_owner._lock:
                self.server_owner.written += written
        self.close_connection = True

    def _send(self, status: int, data: bytes, headers=None, length: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if data:
            self.wfile.write(data)
