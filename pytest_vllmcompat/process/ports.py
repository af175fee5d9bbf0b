"""Free TCP ports for servers and engine rendezvous: the one place the harness picks ports."""

from __future__ import annotations

import random
import socket
import threading

# Ports already handed out by this process. The kernel may return the same
# ephemeral port twice once the probe socket is closed, so without this two
# servers started in one run could be given the same port.
_reserved: set[int] = set()
_lock = threading.Lock()


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free now and not yet handed out by this process.

    Remaining race (TOCTOU): the port is only free at the moment we probe it; another process may bind it
    before our server does. The executor detects "address already in use" in the log of a server that died at
    startup (ServerStartupError.address_in_use) and `start_on_free_port` retries with a new port.
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


def ephemeral_low() -> int:
    """Lowest port of the kernel's ephemeral range (0 when unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def rendezvous_port(host: str = "127.0.0.1") -> int:
    """A port for torch.distributed's TCPStore (MASTER_PORT), below the ephemeral range where possible: on a busy
    host a bind(0) port was taken by an outgoing connection between probe and use (EADDRINUSE)."""
    low = ephemeral_low()
    with _lock:
        for _ in range(50 if low > 12000 else 0):
            port = random.randint(10000, low - 1)
            if port not in _reserved and _bindable(host, port):
                _reserved.add(port)
                return port
    return free_port(host)
