"""The one reader of /proc: process state, groups, environments, command lines, memory, trees (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    state: str  # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    pgid: int
    start_time: int  # clock ticks after boot: orders processes, tells a reused pid from the original

    @property
    def live(self) -> bool:
        return self.state not in "ZX"  # a zombie is dead, just not reaped yet


def stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may contain spaces and ')'
    return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def live(pid: int) -> bool:
    st = stat(pid)
    return st is not None and st.live


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    return [pid for pid in pids() if (st := stat(pid)) is not None and st.pgid == pgid and st.live]


def environ(pid: int) -> dict[str, str] | None:
    """The environment a process was started with, or None when it cannot be read (gone, not ours)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(e.decode(errors="replace").split("=", 1) for e in raw.split(b"\0") if b"=" in e)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def comm(pid: int) -> str:
    """The process's command name (/proc/<pid>/comm), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wchan(pid: int) -> str:
    """Where in the kernel the process's main thread waits ("do_wait": in waitpid, i.e. waiting for a child to
    exit), "" when unknown."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    return [p for p in pids() if (st := stat(p)) is not None and st.ppid == pid and st.live]


def rss_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for pid in pids():
        st = stat(pid)
        if st is not None and st.live:
            children.setdefault(st.ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if live(pid):
            found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def mapped_files(pid: int | str = "self") -> list[str]:
    """Paths of the files mapped into a process (its shared objects among them), in map order; [] when gone."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    seen: dict[str, None] = {}
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            seen.setdefault(parts[5].removesuffix(" (deleted)"), None)
    return list(seen)


def mapped_library(pid: int | str, soname_prefix: str) -> str | None:
    """The mapped file of a process whose name starts with `soname_prefix` (e.g. "libc.so."), or None."""
    return next((p for p in mapped_files(pid) if Path(p).name.startswith(soname_prefix)), None)
