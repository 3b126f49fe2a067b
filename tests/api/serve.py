"""A real API server process for the tests: ``python -m tests.api.serve <fd> <background> <heartbeat>``.

Settings come from GENLOOM_* in the environment; the listening socket is inherited already bound
(fd), so the test knows the port before the server starts and no other process can take it.
"""

from __future__ import annotations

import socket
import sys

from genloom.api import run_server
from genloom.config import Settings


def main(argv: list[str]) -> None:
    fd, background, heartbeat = int(argv[0]), argv[1] == "1", float(argv[2])
    sock = socket.socket(fileno=fd)
    run_server(Settings(), background=background, sockets=[sock], sse_heartbeat=heartbeat)


if __name__ == "__main__":
    main(sys.argv[1:])
