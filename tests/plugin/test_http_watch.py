"""testing/http.py's watch for a server that will never answer: which waiting worker counts as exiting."""

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_vllmcompat.process import procfs
from pytest_vllmcompat.testing import http

# A stand-in server: its own process group; one "worker" child that waits (waitpid) on a child of its own.
SERVER = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.argv[1], '60'])",
                           sys.argv[1]])
time.sleep(60)
"""


@dataclass
class StubServer:
    pid: int
    base_url: str = "http://127.0.0.1:9"
    log_path: Path = Path("/dev/null")
    name: str = "stub"


def started(tmp_path, program: str) -> tuple[subprocess.Popen, int]:
    """The stand-in server whose worker waits on `program` (a copy of sleep under that name); (server, worker pid)."""
    exe = tmp_path / program
    shutil.copy(shutil.which("sleep"), exe)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(exe)], start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = [p for p in procfs.group_members(server.pid) if p != server.pid and procfs.children(p)]
        if workers and procfs.wchan(workers[0]) == "do_wait":
            return server, workers[0]
        time.sleep(0.1)
    server.kill()
    pytest.fail("the stand-in worker never waited on its child")


@pytest.mark.parametrize("program, exiting", [("sleep", True), ("cc1plus", False)])
def test_a_worker_waiting_on_a_compiler_is_working_not_exiting(tmp_path, program, exiting):
    """A worker blocked joining a child that does not exit is what an `llm_worker` that raised looks like; a
    worker waiting on a C++ compiler (torch inductor compiling a kernel) is busy, and stopping its compiler would
    kill the engine (seen on vLLM 0.22.0)."""
    server, worker = started(tmp_path, program)
    try:
        assert procfs.comm(procfs.children(worker)[0]) == program
        assert http.exiting_worker(StubServer(server.pid)) == (worker if exiting else None)
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(server.pid)], check=False)
        server.wait(timeout=10)
