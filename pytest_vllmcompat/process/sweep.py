"""Find and stop tagged processes whose owning pytest process is gone (a crashed run or worker)."""

from __future__ import annotations

import os
import signal

from . import procfs
from .executor import OWNER_VAR, TAG_VAR, signal_group, wait_until


def orphans() -> dict[int, tuple[int, str]]:
    """pid -> (pgid, description) of every live process carrying TAG_VAR whose owner is gone."""
    found = {}
    for pid in procfs.pids():
        env = procfs.environ(pid)
        st = procfs.stat(pid)
        if env is None or TAG_VAR not in env or pid == os.getpid() or st is None or not st.live:
            continue
        owner = int(env.get(OWNER_VAR, "")) if env.get(OWNER_VAR, "").isdigit() else 0
        owner_st = procfs.stat(owner) if owner > 0 else None
        # The owner started the process, so it must be older; a younger one is a reused pid.
        if owner_st is not None and owner_st.live and owner_st.start_time <= st.start_time:
            continue
        found[pid] = (st.pgid, f"pid {pid} (owner {owner} gone, tag {env[TAG_VAR]}): {procfs.cmdline(pid)}")
    return found


def sweep_leftovers(grace: float = 5.0) -> list[str]:
    """Stop tagged processes whose owning pytest process is gone; describe each."""
    own_pgid, found = os.getpgid(0), orphans()

    # Signal whole groups the sweep owns; a pid sharing a group we don't own is signalled alone.
    def send(sig: int) -> None:
        for pid, (pgid, _) in found.items():
            if pgid != own_pgid and pgid > 1 and (pgid in found or not procfs.live(pgid)):
                signal_group(pgid, sig)
            else:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def all_gone() -> bool:
        return not any(procfs.live(p) for p in found)

    if found:
        send(signal.SIGTERM)
        if not wait_until(all_gone, grace):
            send(signal.SIGKILL)
            wait_until(all_gone, 5.0)
    return [desc for _, desc in found.values()]
