"""A peer on the lab's internet: ``serve PORT`` answers every TCP connection and UDP datagram with
the caller's address as it sees it (``ip:port``); ``tcp|udp HOST PORT TIMEOUT [SOURCE]`` asks it and prints
the answer (nothing, exit 1, when no answer came). Standard library only: it runs in any namespace."""

from __future__ import annotations

import socket
import sys
import threading


def serve(port: int) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(64)

    def udp_loop() -> None:
        while True:
            _, address = udp.recvfrom(2048)
            udp.sendto(f"{address[0]}:{address[1]}".encode(), address)

    threading.Thread(target=udp_loop, daemon=True).start()
    while True:
        conn, address = tcp.accept()
        with conn:
            conn.sendall(f"{address[0]}:{address[1]}".encode())


def ask(kind: str, host: str, port: int, timeout: float, source: str | None = None) -> int:
    try:
        if kind == "tcp":
            bind = (source, 0) if source else None
            with socket.create_connection((host, port), timeout=timeout, source_address=bind) as conn:
                answer = conn.recv(256)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
                if source:
                    conn.bind((source, 0))
                conn.settimeout(timeout)
                conn.sendto(b"?", (host, port))
                answer = conn.recv(256)
    except OSError:
        return 1
    print(answer.decode())
    return 0 if answer else 1


def main() -> int:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
        return 0
    source = sys.argv[5] if len(sys.argv) > 5 else None
    return ask(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), source)


if __name__ == "__main__":
    sys.exit(main())
