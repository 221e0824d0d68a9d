"""Peers for the TCP health tests (subprocesses, so flows are found by pid).

server ADDR MODE: listens, prints ``ready PORT``; MODE ``read`` drains what
arrives as fast as it can, ``stall`` accepts and reads nothing. Exits when
the peer closes (``read``) or on ``quit`` from stdin.

client ADDR PORT MODE SECONDS: connects, prints ``connected LPORT``, then
sends for SECONDS: ``bulk`` (64 KiB writes back to back), ``chunks``
(1000-byte writes with 50 ms pauses), ``sndbuf`` (SO_SNDBUF 4096 before
connect, blocking 64 KiB writes: the kernel counts sndbuf-limited time for
a writer that sleeps in sendmsg, not for one that polls, see
docs/flow-health.md), ``idle`` (one 1000-byte write, then an abortive close: SO_LINGER 0).
Then prints ``sent N`` and waits for a line on stdin before closing.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import sys
import time


def say(text: str) -> None:
    print(text, flush=True)


def server(addr: str, mode: str) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mode == "stall":  # a small receive buffer: the window closes soon
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind((addr, 0))
    srv.listen(4)
    say(f"ready {srv.getsockname()[1]}")
    conn, _ = srv.accept()
    if mode == "stall":
        sys.stdin.readline()
        conn.close()
        return
    while conn.recv(1 << 20):
        pass
    conn.close()


def client(addr: str, port: int, mode: str, seconds: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if mode == "sndbuf":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s.connect((addr, port))
    say(f"connected {s.getsockname()[1]}")
    sent = 0
    end = time.monotonic() + seconds
    if mode == "idle":
        sent = s.send(b"i" * 1000)
    elif mode == "sndbuf":  # blocking: each write waits for buffer space in sendmsg
        s.settimeout(None)
        block = b"b" * 16384  # 16 ms at the shaped path's rate: ends near the deadline
        while time.monotonic() < end:
            s.sendall(block)
            sent += len(block)
    elif mode == "chunks":
        while time.monotonic() < end:
            sent += s.send(b"c" * 1000)
            time.sleep(0.05)
    else:  # bulk: as fast as the socket takes it, never blocking past the end
        s.setblocking(False)
        block = b"b" * 65536
        while time.monotonic() < end:
            _, ready, _ = select.select([], [s], [], 0.1)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    sent += s.send(block)
        s.setblocking(True)
    say(f"sent {sent}")
    sys.stdin.readline()
    if mode == "idle":  # abort: no FIN exchange after the idle period
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
