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
    before our listener does; bind(0) gives a port of the kernel's ephemeral range, which every other bind(0) and
    outgoing connection on the host draws from too (for a listener that binds late: late_bind_port). The executor
    detects "address already in use" in the log of a server that died at startup
    (ServerStartupError.address_in_use) and `start_on_free_port` retries with a new port.
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


def late_bind_port(host: str = "127.0.0.1") -> int:
    """A port for a listener that binds it well after we choose it: a server's uvicorn binds after its engine's
    start-up (20-60 s here), torch.distributed's TCPStore (MASTER_PORT) after its imports. Below the kernel's
    ephemeral range where possible: the kernel hands ports of that range to every bind(0) and outgoing connection on
    the host meanwhile (seen: the session server's port taken during its start-up, beside the float32 server's and
    the probes' start-ups; the server died with EADDRINUSE after loading, and its second start on a new port cost the
    cell about 25 s). A port below the range is taken only by an explicit bind to that very port. Else free_port()."""
    low = ephemeral_low()
    with _lock:
        for _ in range(50 if low > 12000 else 0):
            port = random.randint(10000, low - 1)
            if port not in _reserved and _bindable(host, port):
                _reserved.add(port)
                return port
    return free_port(host)
