"""What the test process holds, read from /proc (for the tests that check nothing leaks)."""

from __future__ import annotations

import os


def _socket_inodes() -> set[str]:
    inodes: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    return inodes


def open_sockets(to_port: int | None = None) -> int:
    """The sockets this process has open now; with ``to_port``, only its Unix sockets (event
    loops' self-pipes) and its TCP connections *to* that port (client sides: the other TCP
    sockets of the process — Ray's, the in-process server's accepted ones, which its thread
    closes a moment after the client — come and go on their own)."""
    inodes = _socket_inodes()
    if to_port is None:
        return len(inodes)
    count = 0
    try:
        with open("/proc/net/unix") as fh:
            count += sum(1 for row in fh.read().splitlines()[1:] if row.split()[6] in inodes)
    except (OSError, IndexError):
        pass
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == to_port and fields[9] in inodes:
                count += 1
    return count
