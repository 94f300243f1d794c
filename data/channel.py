"""Worker processes → the writing main process, while a video is still being processed: chunks of
finished frame groups (so a long video is not held whole in a worker) and frame progress.

The main process listens on a Unix socket (``multiprocessing.connection``, authenticated with a random
key per build); each worker connects once, on its first message, and sends length-framed messages
on its own connection, so backpressure is the socket's: a worker waits while the writer is behind.
Messages are our own framing, not pickles. A worker that dies mid-message closes its connection: the
main process reads end-of-file and drops the partial message (its video is retried from the start).

    chunk:    b"C" + token + items, each item: uint32 key length, key, uint64 value length, value
    progress: b"P" + token + uint64 frames done + uint64 frames expected

where token = uint16 length + the ASCII job token that the main process gave the job.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener, wait

CHUNK, PROGRESS = b"C", b"P"

Handler = Callable[[bytes, str, object], None]  # (kind, token, items or (done, expected))


def _token_bytes(token: str) -> bytes:
    t = token.encode("ascii")
    return struct.pack("<H", len(t)) + t


def encode_chunk(token: str, items: list[tuple[bytes, bytes]]) -> bytes:
    parts = [CHUNK, _token_bytes(token)]
    for k, v in items:
        parts += [struct.pack("<I", len(k)), k, struct.pack("<Q", len(v)), v]
    return b"".join(parts)


def encode_progress(token: str, done: int, expected: int) -> bytes:
    return PROGRESS + _token_bytes(token) + struct.pack("<QQ", done, expected)


def decode(msg: bytes) -> tuple[bytes, str, object]:
    """(kind, token, payload) of a message; payload: [(key, value)] for a chunk, (done, expected) for progress."""
    mv = memoryview(msg)
    kind = bytes(mv[:1])
    (n,) = struct.unpack_from("<H", mv, 1)
    token = bytes(mv[3:3 + n]).decode("ascii")
    pos = 3 + n
    if kind == PROGRESS:
        return kind, token, struct.unpack_from("<QQ", mv, pos)
    if kind != CHUNK:
        raise ValueError(f"unknown message kind {kind!r} from a worker")
    items = []
    while pos < len(mv):
        (nk,) = struct.unpack_from("<I", mv, pos)
        key = bytes(mv[pos + 4:pos + 4 + nk])
        pos += 4 + nk
        (nv,) = struct.unpack_from("<Q", mv, pos)
        items.append((key, bytes(mv[pos + 8:pos + 8 + nv])))
        pos += 8 + nv
    return kind, token, items


class ChannelServer:
    """The main process's end: accepts worker connections (in a thread) and reads their messages."""

    def __init__(self) -> None:
        self.authkey = os.urandom(32)
        self._listener = Listener(family="AF_UNIX", authkey=self.authkey)
        self.address = self._listener.address
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="chunk-channel", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn = self._listener.accept()
            except Exception:  # noqa: BLE001 - a client that died or failed the handshake; or closing
                continue
            with self._lock:
                self._conns.append(conn)

    def poll(self, handle: Handler, timeout: float) -> int:
        """Handle every message ready now, waiting up to ``timeout`` s for the first; returns how many."""
        with self._lock:
            conns = list(self._conns)
        if not conns:
            time.sleep(timeout)
            return 0
        n = 0
        for conn in wait(conns, timeout):
            try:
                msg = conn.recv_bytes()
            except (EOFError, OSError):  # the worker ended (or died mid-message: the rest is dropped)
                with self._lock:
                    self._conns.remove(conn)
                conn.close()
                continue
            handle(*decode(msg))
            n += 1
        return n

    def close(self) -> None:
        self._closing = True
        try:  # wake the accept thread (closing a listening socket does not)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.address)
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


class ChannelClient:
    """A worker's end: connects on the first message."""

    def __init__(self, address: str, authkey: bytes):
        self.address, self.authkey = address, authkey
        self._conn: Connection | None = None

    def _send(self, msg: bytes) -> None:
        if self._conn is None:
            self._conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
        self._conn.send_bytes(msg)

    def send_chunk(self, token: str, items: list[tuple[bytes, bytes]]) -> None:
        self._send(encode_chunk(token, items))

    def send_progress(self, token: str, done: int, expected: int) -> None:
        self._send(encode_progress(token, done, expected))
