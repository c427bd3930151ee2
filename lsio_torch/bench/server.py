"""A small HTTP object server over a local folder, with injected latency, bandwidth and faults.

The ``http://`` store of the object-store tests, and the remote peer of
``python -m lsio_torch.bench --store http``. Standard library only.

    with ObjectServer("data/", latency_ms=20) as server:
        url = server.url + "/array.zarr"  # GET and HEAD, with Range
        server.fail(503, times=2, match="/c/")  # the next two chunk reads fail
"""

from __future__ import annotations

import dataclasses
import email.utils
import http
import os
import re
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

#: Body bytes per write: small enough to pace a connection smoothly, large enough to be cheap.
BLOCK = 64 * 1024

#: A log entry: method, path, Range header (or None), status (0: dropped without an answer).
LogEntry = tuple[str, str, str | None, int]


@dataclasses.dataclass
class _Fault:
    """The next ``times`` requests whose path contains ``match`` fail (``status``) or are
    truncated (``status`` None)."""

    match: str
    times: int
    status: int | None


class ObjectServer:
    """Serves the files under ``root`` on ``http://127.0.0.1:PORT`` (a free port), in
    background threads, until :meth:`close`.

    ``GET`` and ``HEAD``; a ``Range`` of ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` is
    answered ``206`` with ``Content-Range``, one that starts past the end ``416``; a header
    of several ranges is refused with ``416``; a malformed one is ignored (``200``, the whole
    file), as RFC 7233 says. Every answer carries ``Content-Length``; file answers carry
    ``ETag`` (from size and mtime), ``Last-Modified`` and ``Accept-Ranges``. A missing file,
    a folder or a path with ``..`` is ``404``. Symlinks under ``root`` are followed.

    ``latency_ms`` is slept before each status line (concurrent requests overlap);
    ``bandwidth`` (bytes/s, None: unlimited) paces each connection's body writes. Both may be
    changed while serving. Faults are set with :meth:`fail`, :meth:`truncate`,
    :meth:`stall` and :meth:`kill`.
    """

    def __init__(
        self, root: str | Path, *, latency_ms: float = 0, bandwidth: float | None = None
    ) -> None:
        self.root = Path(root)
        self.latency_ms = latency_ms
        self.bandwidth = bandwidth
        #: (method, path, Range header or None, status) per request, in answer order; a
        #: request dropped unanswered (stalled or killed) has status 0.
        self.log: list[LogEntry] = []
        #: Bodies cut short by :meth:`truncate` so far.
        self.truncated = 0
        #: Requests received so far (answered or not): what a test waits on to know that a
        #: request reached the server.
        self.arrived = 0
        #: The most requests held in the latency wait at once: whether they overlapped.
        self.most_waiting = 0
        self._waiting = 0
        #: The most requests open at once, from arrival until answered (or dropped).
        self.most_open = 0
        self._open_now = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._faults: list[_Fault] = []
        self._stall_match: str | None = None
        self._unstalled = threading.Event()
        self._unstalled.set()
        self._stopped = threading.Event()
        self._httpd = _Httpd(self)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._serving = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="object-server",
            daemon=True,
        )
        self._serving.start()

    @property
    def requests(self) -> int:
        """The number of requests answered (or dropped) so far."""
        with self._lock:
            return len(self.log)

    def fail(self, status: int, times: int, match: str = "") -> None:
        """Answers the next ``times`` requests whose path contains ``match`` with ``status``
        and a short body, then serves normally again."""
        if times > 0:
            with self._lock:
                self._faults.append(_Fault(match, times, status))

    def truncate(self, times: int, match: str = "") -> None:
        """Sends the next ``times`` matching GETs the right headers (the full
        ``Content-Length``) but half the body, then closes their connection."""
        if times > 0:
            with self._lock:
                self._faults.append(_Fault(match, times, None))

    def stall(self, match: str = "") -> None:
        """Accepts matching requests and never answers them until :meth:`unstall` (they are
        then served) or :meth:`close` (they are dropped): a server gone silent."""
        with self._lock:
            self._stall_match = match
            self._unstalled.clear()

    def unstall(self) -> None:
        """Ends :meth:`stall`: the requests it held are served."""
        with self._lock:
            self._stall_match = None
            self._unstalled.set()

    def kill(self) -> None:
        """Dies at once: stops accepting (later connections are refused) and resets every
        open connection, mid-body or idle."""
        self._stop(reset=True)

    def close(self) -> None:
        """Stops serving, closes every client connection and joins the server's threads."""
        self._stop(reset=False)

    def __enter__(self) -> ObjectServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _stop(self, reset: bool) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self._unstalled.set()
        self._httpd.shutdown()
        self._serving.join()
        self._httpd.server_close()
        self._httpd.drop_connections(reset)
        self._httpd.join_threads()

    def wait_for(self, condition: Callable[[ObjectServer], bool], timeout: float = 30) -> None:
        """Blocks until ``condition(self)`` holds (checked as each request arrives and is
        answered), or raises ``TimeoutError`` after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self), timeout):
                raise TimeoutError(f"the object server did not reach {condition} in {timeout} s")

    def _arrive(self) -> None:
        with self._changed:
            self.arrived += 1
            self._open_now += 1
            self.most_open = max(self.most_open, self._open_now)
            self._changed.notify_all()

    def _leave(self) -> None:
        with self._changed:
            self._open_now -= 1

    def _wait_latency(self, seconds: float) -> bool:
        """Sleeps the latency (overlapping other requests'); True when the server stopped."""
        with self._changed:
            self._waiting += 1
            self.most_waiting = max(self.most_waiting, self._waiting)
        try:
            return self._stopped.wait(seconds)
        finally:
            with self._changed:
                self._waiting -= 1

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        """The fault this request meets, counted down; None for normal service. A HEAD has
        no body to truncate: it meets only failures."""
        with self._lock:
            for fault in self._faults:
                if fault.match in path and (fault.status is not None or method == "GET"):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _stalls(self, path: str) -> bool:
        with self._lock:
            return self._stall_match is not None and self._stall_match in path

    def _record(self, entry: LogEntry, truncated: bool = False) -> None:
        with self._changed:
            self.log.append(entry)
            self.truncated += truncated
            self._changed.notify_all()

    def _open(self, url_path: str) -> int | None:
        """A descriptor of the regular file a URL path names under root; None for a missing
        file, a folder, or a path that leaves root."""
        parts = urllib.parse.unquote(url_path.split("?", 1)[0]).split("/")
        if ".." in parts or any("\0" in part for part in parts):
            return None
        path = self.root.joinpath(*(part for part in parts if part not in ("", ".")))
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        return None


class _Httpd(ThreadingHTTPServer):
    """A threading HTTP server that tracks its connections and their threads, so that
    closing it can end both."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, owner: ObjectServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._tracked = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's name, which may wait on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        with self._tracked:
            self._connections.add(request)
            self._handlers.add(thread)
        thread.start()

    def _handle(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._tracked:
                self._handlers.discard(threading.current_thread())

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        # Under the lock, so that drop_connections never touches a closed socket.
        with self._tracked:
            self._connections.discard(request)
            super().shutdown_request(request)

    def drop_connections(self, reset: bool) -> None:
        """Shuts every open connection; ``reset``: with a TCP reset when it is closed."""
        with self._tracked:
            for connection in self._connections:
                try:
                    if reset:
                        linger = struct.pack("ii", 1, 0)
                        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def join_threads(self) -> None:
        """Waits for every connection's thread to end."""
        with self._tracked:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join()

    def handle_error(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        # A client that hangs up mid-answer, or a connection dropped by close or kill.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class ObjectHandler(BaseHTTPRequestHandler):
    """A quiet keep-alive handler of ``GET`` and ``HEAD``, both answered by ``_answer``
    (``body`` False for ``HEAD``): this server's, and the tests' hostile one's."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        raise NotImplementedError


class _Handler(ObjectHandler):
    """One connection: keep-alive requests, each answered from the file its path names."""

    disable_nagle_algorithm = True
    server: _Httpd

    def _answer(self, body: bool) -> None:
        self.server.owner._arrive()
        try:
            self._answer_arrived(body)
        finally:
            self.server.owner._leave()

    def _answer_arrived(self, body: bool) -> None:
        owner = self.server.owner
        ranges = self.headers.get("Range")
        entry = (self.command, self.path, ranges)
        fault = owner._take_fault(self.command, self.path)
        if owner._stalls(self.path):
            owner._unstalled.wait()
        latency = owner.latency_ms / 1000
        if owner._stopped.is_set() or (latency > 0 and owner._wait_latency(latency)):
            owner._record((*entry, 0))
            self.close_connection = True
            return
        if fault is not None and fault.status is not None:
            owner._record((*entry, fault.status))
            self._send(fault.status, {}, f"injected {fault.status}\n".encode() if body else b"")
            return
        fd = owner._open(self.path)
        if fd is None:
            owner._record((*entry, 404))
            self._send(404, {}, b"not found\n" if body else b"")
            return
        try:
            self._send_file(fd, ranges, body, truncate=fault is not None, entry=entry)
        finally:
            os.close(fd)

    def _send_file(
        self,
        fd: int,
        ranges: str | None,
        body: bool,
        truncate: bool,
        entry: tuple[str, str, str | None],
    ) -> None:
        info = os.fstat(fd)
        size = info.st_size
        headers = {
            "ETag": f'"{size:x}-{info.st_mtime_ns:x}"',
            "Last-Modified": email.utils.formatdate(info.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        try:
            span = byte_range(ranges, size) if ranges is not None else None
        except ValueError:
            self.server.owner._record((*entry, 416))
            headers["Content-Range"] = f"bytes */{size}"
            self._send(416, headers, b"range not satisfiable\n" if body else b"")
            return
        status = 200
        start, end = 0, size
        if span is not None:
            status = 206
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.server.owner._record((*entry, status), truncated=truncate and body)
        headers["Content-Type"] = "application/octet-stream"
        count = end - start
        sent = count // 2 if truncate else count
        if truncate:
            self.close_connection = True
        if not body:
            self._send(status, headers, b"", length=count)
        elif sent <= BLOCK and self.server.owner.bandwidth is None:
            self._send(status, headers, os.pread(fd, sent, start), length=count)
        else:
            self._send(status, headers, b"", length=count)
            self._send_body(fd, start, sent)

    def _send_body(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of ``fd`` from ``offset``, paced to the server's bandwidth."""
        owner = self.server.owner
        out = self.connection.fileno()
        began = time.monotonic()
        done = 0
        while done < count:
            bandwidth = owner.bandwidth
            block = count - done if bandwidth is None else min(BLOCK, count - done)
            written = os.sendfile(out, fd, offset + done, block)
            if written == 0:
                raise ConnectionError("the client closed the connection")
            done += written
            if bandwidth is not None:
                wait = began + done / bandwidth - time.monotonic()
                if wait > 0 and owner._stopped.wait(wait):
                    raise ConnectionError("the server closed")

    def _send(
        self, status: int, headers: dict[str, str], body: bytes, length: int | None = None
    ) -> None:
        """The status line, headers and ``body`` in one write; ``length``: the
        ``Content-Length`` when it is not ``len(body)`` (HEAD, or a body sent after)."""
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body) if length is None else length}")
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` a ``Range`` header asks of ``size`` bytes; None for a malformed
    header (ignored).

    Raises:
        ValueError: a range that starts past the end, or several ranges."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        raise ValueError(f"several ranges in {header!r}")
    bounds = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", spec, re.ASCII)
    if bounds is None or bounds.groups() == ("", ""):
        return None
    first, last = bounds.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise ValueError(f"range {header!r} of an empty file or of no bytes")
        return max(0, size - suffix), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise ValueError(f"range {header!r} starts past the end ({size} bytes)")
    return start, size if last == "" else min(int(last) + 1, size)


def main(argv: list[str] | None = None) -> None:
    """Serves a folder until killed or until its standard input ends, printing its URL first
    (the bench runs it in a process of its own, so that serving does not share the measured
    process's interpreter; a bench that dies closes the pipe, and the server ends with it)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s per connection")
    args = parser.parse_args(argv)
    server = ObjectServer(args.root, latency_ms=args.latency_ms, bandwidth=args.bandwidth)
    print(server.url, flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
