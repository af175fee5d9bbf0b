"""What the process self-tests read of /proc themselves, independent of the code under test (procfs.py)."""

from pathlib import Path


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"
