"""CPU of one ``send()`` and one ``recv()`` on a loopback TCP connection.

Why: a single-route PUT is one request in and one answer out, and a push is
one request out and one ack in; on a virtual machine a syscall that wakes
another process can cost far more than the work around it. This measures the
floor under every HTTP exchange the mesh makes on this machine, with no mesh
code at all: two processes play ping-pong with small messages (the size of a
PUT's request and answer), ``TCP_NODELAY`` on both ends as the agents set it,
and the client's thread CPU time is summed around each call.

Run: python scripts/bench/loopback_cost.py [--round-trips 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time


def _echo(server: socket.socket, round_trips: int, size: int) -> None:
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answer = b"a" * size
    for _ in range(round_trips):
        if not conn.recv(4096):
            break
        conn.sendall(answer)
    conn.close()


def once(round_trips: int, size: int) -> tuple[float, float]:
    """(µs of CPU per send, per recv) on the client side of one connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    address = server.getsockname()
    pid = os.fork()
    if pid == 0:  # the echo side
        try:
            _echo(server, round_trips, size)
        finally:
            os._exit(0)
    server.close()
    client = socket.create_connection(address)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"q" * size
    clock = time.thread_time
    sending = receiving = 0.0
    try:
        for _ in range(round_trips):
            t0 = clock()
            client.sendall(request)
            t1 = clock()
            client.recv(4096)
            t2 = clock()
            sending += t1 - t0
            receiving += t2 - t1
    finally:
        client.close()
        os.waitpid(pid, 0)
    return 1e6 * sending / round_trips, 1e6 * receiving / round_trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--size", type=int, default=150, help="bytes each way")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    runs = [once(args.round_trips, args.size) for _ in range(args.reps)]
    for name, values in (
        ("send", [r[0] for r in runs]),
        ("recv", [r[1] for r in runs]),
    ):
        print(
            f"{name}: {statistics.median(values):.1f} "
            f"[{min(values):.1f}..{max(values):.1f}] µs of CPU per call "
            f"({args.round_trips} round trips of {args.size} bytes, "
            f"{args.reps} reps)"
        )


if __name__ == "__main__":
    main()
