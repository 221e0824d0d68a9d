"""Traffic peers for the flow monitor's kernel tests, run as subprocesses so
that attribution can be checked by pid. Each prints ``ready PORT`` when
listening, and ``done`` at the end; exact byte counts are arguments."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import sys
import time


def fam(name: str) -> socket.AddressFamily:
    return socket.AF_INET6 if name == "6" else socket.AF_INET


def recv_exact(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(min(65536, n - got))
        if not chunk:
            raise SystemExit(f"peer closed after {got} of {n} bytes")
        got += len(chunk)


def say(text: str) -> None:
    print(text, flush=True)


def tcp_server(family: str, addr: str, recv_n: int, send_m: int, mode: str) -> None:
    srv = socket.socket(fam(family), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, 0))
    srv.listen(16)
    say(f"ready {srv.getsockname()[1]}")
    conn, _ = srv.accept()
    recv_exact(conn, recv_n)
    conn.sendall(b"s" * send_m)
    if mode == "linger0":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        # wait for the client's close so that our close is a clean FIN exchange
        conn.recv(1)
    conn.close()
    srv.close()
    say("done")


def tcp_client(family: str, addr: str, port: int, send_n: int, recv_m: int, mode: str) -> None:
    s = socket.socket(fam(family), socket.SOCK_STREAM)
    s.connect((addr, port))
    s.sendall(b"c" * send_n)
    recv_exact(s, recv_m)
    if mode == "linger0":
        with contextlib.suppress(ConnectionResetError):
            s.recv(1)  # the server's RST
    s.close()
    say("done")


def tcp_refused(family: str, addr: str, port: int) -> None:
    s = socket.socket(fam(family), socket.SOCK_STREAM)
    try:
        s.connect((addr, port))
    except ConnectionRefusedError:
        say("refused")
    else:
        say("connected?!")
    s.close()


def udp_server(family: str, addr: str, count: int, reply: int) -> None:
    s = socket.socket(fam(family), socket.SOCK_DGRAM)
    s.bind((addr, 0))
    say(f"ready {s.getsockname()[1]}")
    for _ in range(count):
        _data, peer = s.recvfrom(65536)
        s.sendto(b"r" * reply, peer)
    s.close()
    say("done")


def udp_client(
    family: str, addr: str, port: int, count: int, size: int, reply: int, mode: str
) -> None:
    s = socket.socket(fam(family), socket.SOCK_DGRAM)
    s.settimeout(5)
    if mode == "connected":
        s.connect((addr, port))
    for _ in range(count):
        if mode == "connected":
            s.send(b"u" * size)
            data = s.recv(65536)
        else:
            s.sendto(b"u" * size, (addr, port))
            data, _ = s.recvfrom(65536)
        assert len(data) == reply, len(data)
    s.close()
    say("done")


def sendfile_server(path: str, recv_n: int) -> None:
    """Receive recv_n bytes, answer with the whole file through sendfile(2)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    say(f"ready {srv.getsockname()[1]}")
    conn, _ = srv.accept()
    recv_exact(conn, recv_n)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        sent = 0
        while sent < size:
            sent += os.sendfile(conn.fileno(), f.fileno(), sent, size - sent)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # the client's close
    conn.close()
    srv.close()
    say("done")


def prefork_server(workers: int, per_worker: int, close: str = "after-peer") -> None:
    """A listener made by the parent; forked workers accept. Each connection
    says how many bytes it sends (8-byte header included in the count); the
    worker answers with reply_of(n) bytes and reports what it served.
    ``close``: ``after-peer`` (wait for the client's FIN, then close),
    ``first`` (close at once: FIN_WAIT1), ``abort`` (close with unread data
    the client sent after the reply: a reset; counted as received)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    say(f"ready {srv.getsockname()[1]}")
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(per_worker):
                    conn, peer = srv.accept()
                    (n,) = struct.unpack("!Q", conn.recv(8, socket.MSG_WAITALL))
                    recv_exact(conn, n - 8)
                    reply = n // 3 + 7
                    conn.sendall(b"w" * reply)
                    if close == "after-peer":
                        conn.recv(1)  # the client's close
                    elif close == "abort":
                        select.select([conn], [], [], 10)  # unread bytes are here
                        n += len(conn.recv(65536, socket.MSG_PEEK))
                    conn.close()
                    say(f"served {os.getpid()} {peer[1]} {n} {reply}")
            finally:
                os._exit(0)
        pids.append(pid)
    srv.close()
    for pid in pids:
        os.waitpid(pid, 0)
    say("done")


def early_client(port: int, before: int, after: int) -> None:
    """Connected and sending before the collector starts (told on stdin)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"e" * before)
    recv_exact(s, 1)
    say("connected")
    sys.stdin.readline()
    s.sendall(b"e" * after)
    recv_exact(s, 1)
    s.close()
    say("done")


def ack_server(before: int, after: int) -> None:
    """Acknowledges each phase of early_client with one byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    say(f"ready {srv.getsockname()[1]}")
    conn, _ = srv.accept()
    for n in (before, after):
        recv_exact(conn, n)
        conn.sendall(b"k")
    conn.recv(1)
    conn.close()
    srv.close()
    say("done")


def main(argv: list[str]) -> None:
    cmd, *a = argv
    if cmd == "tcp-server":
        tcp_server(a[0], a[1], int(a[2]), int(a[3]), a[4])
    elif cmd == "tcp-client":
        tcp_client(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5])
    elif cmd == "tcp-refused":
        tcp_refused(a[0], a[1], int(a[2]))
    elif cmd == "udp-server":
        udp_server(a[0], a[1], int(a[2]), int(a[3]))
    elif cmd == "udp-client":
        udp_client(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6])
    elif cmd == "sendfile-server":
        sendfile_server(a[0], int(a[1]))
    elif cmd == "prefork-server":
        prefork_server(int(a[0]), int(a[1]), *a[2:3])
    elif cmd == "early-client":
        early_client(int(a[0]), int(a[1]), int(a[2]))
    elif cmd == "ack-server":
        ack_server(int(a[0]), int(a[1]))
    elif cmd == "sleep":
        time.sleep(float(a[0]))
    else:
        raise SystemExit(f"unknown peer command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
