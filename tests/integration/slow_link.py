"""A TCP proxy in front of a database server that forwards the client's bytes slowly, in small
pieces, with small socket buffers: a client that sends more than the link holds at once must keep
sending while it waits for answers (what a server busy with an earlier statement of a pipeline, or
a far one, makes of a big message). ``stall()`` stops forwarding altogether (a wedged link) and
``cut()`` closes every connection, so a client stuck on the link gets an error instead of a hang.
``swallow()`` drops, from then on, whatever the server sends on the connections open by then (an
answer that never comes, its connection left open); connections opened later flow as before."""

from __future__ import annotations

import socket
import threading
import time


class SlowLink:
    def __init__(self, host: str, port: int, *, piece: int = 16384, pause: float = 0.002) -> None:
        self.target = (host, port)
        self.piece, self.pause = piece, pause
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # inherited by accepted sockets
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._closed = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._swallowed: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="slow-link", daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` (a SQLAlchemy URL of the target server) through this link."""
        host = f"{self.target[0]}:{self.target[1]}"
        assert host in url, url
        return url.replace(host, f"127.0.0.1:{self.port}")

    def stall(self) -> None:
        self._flowing.clear()

    def swallow(self) -> None:
        self._swallowed.update(self._socks)

    def flow(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        self._closed.set()
        self._flowing.set()
        for s in [self._listener, *self._socks]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._socks += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while not self._closed.is_set():
                self._flowing.wait()
                data = src.recv(self.piece if slow else 65536)
                if not data:
                    break
                if src in self._swallowed:
                    continue  # the server's answer goes nowhere
                dst.sendall(data)
                if slow:
                    time.sleep(self.pause)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
