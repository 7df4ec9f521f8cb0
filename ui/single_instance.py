"""One running app per user: a second launch with files hands them to the first and exits.

The first instance listens on a local socket (``QLocalServer``: a Unix socket, a named pipe on
Windows) named after the user.  A later ``model-workbench FILE`` connects, sends one JSON line
``{"paths": [...]}`` with absolute paths, waits for ``ok`` and exits; the running instance opens the
file and raises its window.  When nothing answers (no instance, or a stale socket left by a crash)
the new process carries on as a normal new window and takes over the name.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
from typing import Sequence

from PySide6.QtCore import QByteArray, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

ENV_NAME = "WORKBENCH_INSTANCE_NAME"  # overrides the socket name (tests, several separate sessions)
CONNECT_TIMEOUT_MS = 500
REPLY_TIMEOUT_MS = 3000
MAX_MESSAGE = 1 << 20


def server_name() -> str:
    """``model-workbench-<hash of user>``: one instance per user, a short name valid on every platform."""
    if os.environ.get(ENV_NAME):
        return os.environ[ENV_NAME]
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return "model-workbench-" + hashlib.sha1(user.encode("utf-8")).hexdigest()[:10]


def send_paths(paths: Sequence[str], name: str | None = None, connect_timeout_ms: int = CONNECT_TIMEOUT_MS,
               reply_timeout_ms: int = REPLY_TIMEOUT_MS) -> bool:
    """Hand ``paths`` to a running instance; True when it acknowledged them.  Needs no event loop."""
    socket = QLocalSocket()
    socket.connectToServer(name or server_name())
    if not socket.waitForConnected(connect_timeout_ms):
        return False
    message = json.dumps({"paths": [os.path.abspath(p) for p in paths]}).encode("utf-8") + b"\n"
    socket.write(QByteArray(message))
    ok = socket.waitForBytesWritten(reply_timeout_ms)
    reply = b""
    while ok and not reply.endswith(b"\n") and socket.waitForReadyRead(reply_timeout_ms):
        reply += bytes(socket.readAll().data())
    socket.disconnectFromServer()
    return reply.strip() == b"ok"


def instance_running(name: str | None = None, timeout_ms: int = CONNECT_TIMEOUT_MS) -> bool:
    """Whether another instance is listening (a connection is made and dropped at once)."""
    socket = QLocalSocket()
    socket.connectToServer(name or server_name())
    if not socket.waitForConnected(timeout_ms):
        return False
    socket.disconnectFromServer()
    return True


def start_server(name: str | None = None, parent: QObject | None = None) -> "InstanceServer | None":
    """Become the instance later launches talk to, unless another one already is (then None)."""
    if instance_running(name):
        return None
    server = InstanceServer(name, parent)
    return server if server.listen() else None


class InstanceServer(QObject):
    """Listens for later launches; emits ``open_requested(list[str])`` with the paths each one sent."""

    open_requested = Signal(list)

    def __init__(self, name: str | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.name = name or server_name()
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._on_connection)
        self._buffers: dict[QLocalSocket, bytes] = {}

    def listen(self) -> bool:
        """Take the name.  A stale socket (the previous instance crashed) is removed first: call this
        only after :func:`send_paths` found no instance answering."""
        if self.server.listen(self.name):
            return True
        QLocalServer.removeServer(self.name)
        return self.server.listen(self.name)

    def close(self) -> None:
        self.server.close()

    def _on_connection(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            self._buffers[sock] = b""
            sock.readyRead.connect(lambda s=sock: self._on_ready(s))
            sock.disconnected.connect(lambda s=sock: self._drop(s))
            if sock.bytesAvailable():
                self._on_ready(sock)

    def _drop(self, sock: QLocalSocket) -> None:
        self._buffers.pop(sock, None)
        sock.deleteLater()

    def _on_ready(self, sock: QLocalSocket) -> None:
        if sock not in self._buffers:
            return
        data = self._buffers[sock] + bytes(sock.readAll().data())
        if b"\n" not in data:
            if len(data) > MAX_MESSAGE:
                self._buffers.pop(sock, None)
                sock.abort()
            else:
                self._buffers[sock] = data
            return
        self._buffers.pop(sock, None)
        line = data.split(b"\n", 1)[0]
        try:
            paths = json.loads(line.decode("utf-8"))["paths"]
            if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
                raise ValueError("paths must be a list of strings")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            sock.write(QByteArray(b"error\n"))
            sock.flush()
            sock.disconnectFromServer()
            return
        sock.write(QByteArray(b"ok\n"))
        sock.flush()
        sock.disconnectFromServer()
        self.open_requested.emit(paths)


def raise_window(window) -> None:
    """Bring a window to the front (un-minimize, raise, ask the window manager for focus)."""
    from PySide6.QtCore import Qt

    window.setWindowState((window.windowState() & ~Qt.WindowState.WindowMinimized) | Qt.WindowState.WindowActive)
    window.show()
    window.raise_()
    window.activateWindow()
