"""A TCP proxy a fault test controls: the server behind it dies, goes silent or slows down
for the client, and keeps its state.

Used by fault tests (an S3 endpoint killed, stalled or slowed mid-transfer) that must
afterwards look at what the real server holds:

* ``kill()``: a crashed server. New connections are refused, open ones reset.
* ``stall()``: a silent one (a hung server, a black-holed route). Connections are still
  accepted, but no byte is forwarded either way until ``resume()``; what was held is then
  delivered, in order.
* ``throttle(bytes_per_s)``: a slow but live one. Each direction forwards at most that
  rate, in small slices, so bytes keep arriving; ``throttle(None)`` is full speed again.

``close()`` ends everything (tests call it when done; ``kill()`` does the same).

Why ``kill()`` shuts the sockets down before closing them: each connection has two pump
threads blocked in ``recv()``. On Linux, ``close()`` of a socket that another thread is
blocked reading does not close it: the blocked call holds the socket open until it
returns, and ``SO_LINGER`` applies only then. A client that had sent its whole request
and waited for the answer therefore saw nothing at all, and waited out its own read
timeout (60 s for boto3). ``shutdown(SHUT_RDWR)`` wakes every blocked ``recv()``,
``send()`` and ``accept()`` at once; the close that follows (linger 0) resets the peer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

_CHUNK = 65536
_RCVBUF = 128 * 1024
_SLICE_S = 0.02  # a throttled pump sends a slice this often


class TcpProxy:
    """Forward 127.0.0.1:<port> to target; kill / stall / resume / throttle it (see above)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        # A small receive buffer (accepted sockets inherit it): a throttled or stalled proxy
        # then pushes back on the client within a few hundred KiB, as a slow link does,
        # instead of taking megabytes into loopback's buffers. Loopback is still fast.
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        self._listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._dead = False
        self._flowing = threading.Event()  # cleared while stalled
        self._flowing.set()
        self._rate: float | None = None
        self.forwarded = 0  # bytes forwarded, both directions (tests poll it)
        threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def kill(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self._dead = True
            sockets, self._sockets = [self._listener, *self._sockets], []
        self._flowing.set()  # pumps held by a stall wake up, find the sockets gone and end
        _reset(*sockets)

    close = kill

    def stall(self) -> None:
        """Keep accepting connections, forward nothing (either way) until resume()."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, first what was held during the stall."""
        self._flowing.set()

    def throttle(self, bytes_per_s: float | None) -> None:
        """Forward at most bytes_per_s in each direction (None: as fast as possible)."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be > 0 (use stall() to forward nothing)")
        self._rate = bytes_per_s

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._dead:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._dead:  # killed while this one was being accepted: reset it too
                    _reset(client, upstream)
                    return
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        pace = [time.monotonic()]  # when this direction may send its next slice
        with contextlib.suppress(OSError):
            while data := src.recv(_CHUNK):
                self._forward(dst, memoryview(data), pace)
        if not self._dead:  # a clean end of one direction: pass it on
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _forward(self, dst: socket.socket, view: memoryview, pace: list[float]) -> None:
        while view.nbytes:
            self._flowing.wait()
            if self._dead:
                raise OSError("proxy killed")
            rate = self._rate
            if rate is None:
                n = view.nbytes
                pace[0] = time.monotonic()
            else:  # a slice every _SLICE_S at most, on a schedule that keeps the rate
                n = min(view.nbytes, max(1, int(rate * _SLICE_S)))
                now = time.monotonic()
                pace[0] = max(pace[0], now - _SLICE_S)  # no burst after an idle spell
                if pace[0] > now:
                    time.sleep(pace[0] - now)
                pace[0] += n / rate
            dst.sendall(view[:n])
            with self._lock:
                self.forwarded += n
            view = view[n:]


def _reset(*sockets: socket.socket) -> None:
    """Wake whatever blocks on the sockets, then close them with linger 0 (the peer gets a
    RST, as from a crashed server's kernel). See the module docstring."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
