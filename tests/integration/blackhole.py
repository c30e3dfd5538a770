"""A TCP forwarder whose path can be made to stop answering without closing (a blackhole).

Put it between the proxy and PostgreSQL (the proxy's target is the forwarder's port):

    with Forwarder(target_port=pg.port) as fwd:
        ...                     # proxy -> 127.0.0.1:fwd.port -> PostgreSQL
        fwd.blackhole()         # nothing is forwarded any more, in either direction; no socket
                                # is closed, new connections are accepted and then get nothing
        fwd.heal()              # what was held back is delivered, forwarding goes on

`Forwarder(port, delay=0.05)` makes a slow path instead: each chunk is passed on 50 ms late, and
a new connection's first bytes 150 ms late (its handshake costs a round trip first).

As with a network path that drops packets and comes back before TCP gives up, no byte is lost
or reordered: each direction holds what it read and reads no more until `heal()`. A peer that
closes its side during the blackhole is seen as closed by the other side only after `heal()`.
"""

from __future__ import annotations

import socket
import threading
import time


class Forwarder:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", delay: float = 0.0):
        """`delay`: seconds each chunk is held before it is passed on (a slow path)."""
        self.target = (target_host, target_port)
        self.delay = delay
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._ended: set[int] = set()  # id() of sockets whose reading direction has ended
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"fwd-{self.port}", daemon=True)
        self._thread.start()

    # -- control -------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop forwarding in both directions; every socket stays open."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward again, starting with what was held back."""
        self._flowing.set()

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def open_connections(self) -> int:
        """Accepted connections whose two sockets are both still open."""
        with self._lock:
            return sum(1 for s in self._sockets if s.fileno() >= 0) // 2

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        _close(self._listener)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            _close(s)

    def __enter__(self) -> "Forwarder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the pumps -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True,
                             name=f"fwd-{self.port}-open").start()

    def _open(self, client: socket.socket) -> None:
        if self.delay:
            # A new connection over a slow path costs a round trip (SYN, SYN-ACK) before its
            # first bytes can go.
            time.sleep(2 * self.delay)
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sockets += [client, upstream]
            self.accepted += 1
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                             name=f"fwd-{self.port}-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                # Not even read while blackholed: what the peer sends stays in the kernel.
                self._flowing.wait()
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                # A chunk read just as the blackhole began is held back with the rest.
                self._flowing.wait()
                if self._closed:
                    return
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # When both directions have ended, both sockets go.
            with self._lock:
                done = id(dst) in self._ended
                self._ended.add(id(src))
            if done:
                for s in (src, dst):
                    _close(s)


def _close(s: socket.socket) -> None:
    """Close for real: a bare close() leaves the connection open while another thread is
    blocked in recv() on the socket; shutdown() wakes it and sends the FIN."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
