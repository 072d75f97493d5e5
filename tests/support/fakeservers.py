"""
A small threaded TCP server for fake backends: it listens on an OS-chosen
port, serves each connection in its own thread, and stops cleanly.
Subclasses say what a connection gets (C{serve}) and what to remember about
it when it is accepted (C{accepted}).
"""

from __future__ import annotations

import socket
import threading
from typing import Any


class ThreadedServer:
    def __init__(self, host: str) -> None:
        self.host = host
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def accepted(self, connection: socket.socket) -> tuple[Any, ...]:
        """
        Called with the lock held, in order of arrival; returns the extra
        arguments for C{serve}.
        """
        return ()

    def serve(self, connection: socket.socket, *extra: Any) -> None:
        raise NotImplementedError()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    connection.close()
                    return
                extra = self.accepted(connection)
                self._connections.append(connection)
                thread = threading.Thread(
                    target=self._serveAndClose, args=(connection, *extra), daemon=True
                )
                self._threads.append(thread)
            thread.start()

    def _serveAndClose(self, connection: socket.socket, *extra: Any) -> None:
        try:
            connection.settimeout(30)
            self.serve(connection, *extra)
        except OSError:
            return
        finally:
            connection.close()

    def close(self) -> None:
        """
        Stop listening, drop every connection and wait for the threads.
        """
        with self._lock:
            self._stopping = True
        try:
            # Wakes the acceptor up: closing the listener does not.
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            pass
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(5)
