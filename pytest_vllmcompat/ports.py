"""Free TCP port allocation for test servers."""

from __future__ import annotations

import socket
import threading

# Ports already handed out by this process. The kernel may return the same
# ephemeral port twice once the probe socket is closed, so without this two
# servers started in one run could be given the same port.
_reserved: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free now and not yet handed out by this process.

    Remaining race (TOCTOU): the port is only free at the moment we probe it;
    another process may bind it before our server does. ServerProcess detects
    "address already in use" in the log of a server that died at startup and
    says so (ServerStartupError.address_in_use), so the caller can retry with
    a new port.
    """
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _reserved:
                _reserved.add(port)
                return port
    raise RuntimeError(f"no unreserved free port found on {host} after 100 tries")
