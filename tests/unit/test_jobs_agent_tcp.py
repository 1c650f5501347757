"""The job agent in a pod: no socket can be shared, so it serves TCP and answers only the engine's
bearer token (a real ``dask scheduler --preload vre_session.jobs.agent`` on this machine; the
test talks to it on 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vre.jobs.executor import ExecutorError, _http


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scheduler(env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    dask = Path(sys.executable).parent / "dask"
    argv = [str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(_free_port()), "--dashboard-address",
            f"127.0.0.1:{_free_port()}", "--preload", "vre_session.jobs.agent"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    return subprocess.Popen(argv, env={**clean, **env}, stdout=open(tmp_path / "log.txt", "w"),
                            stderr=subprocess.STDOUT, cwd=tmp_path)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_agent_on_tcp_answers_only_its_token(tmp_path):
    port, token = _free_port(), secrets.token_urlsafe(32)
    proc = _scheduler({"VRE_AGENT_PORT": str(port), "VRE_AGENT_TOKEN": token}, tmp_path)
    try:
        async def ask(tok: str) -> dict:
            return await _http(("127.0.0.1", port), "GET", "/jobs", timeout=5, token=tok)

        deadline = time.monotonic() + 60
        while True:
            try:
                status = asyncio.run(ask(token))
                break
            except (OSError, asyncio.TimeoutError):
                assert proc.poll() is None, (tmp_path / "log.txt").read_text()
                assert time.monotonic() < deadline, (tmp_path / "log.txt").read_text()
                time.sleep(0.2)
        assert status["jobs"] == {} and status["workers"] == []
        for wrong in ("", token[:-1] + ("x" if token[-1] != "x" else "y"), token + "x"):
            with pytest.raises(ExecutorError, match="agent answered 401"):
                asyncio.run(ask(wrong))
            with pytest.raises(ExecutorError, match="agent answered 401"):
                asyncio.run(_http(("127.0.0.1", port), "POST", "/jobs/1/cancel", {}, timeout=5, token=wrong))
        # the token is not left in the scheduler's environment for Dask's tools to show
        assert token not in str(asyncio.run(ask(token)))
    finally:
        _stop(proc)


def test_the_agent_refuses_to_listen_without_a_socket_or_a_long_token(tmp_path):
    port = _free_port()
    proc = _scheduler({"VRE_AGENT_PORT": str(port), "VRE_AGENT_TOKEN": "short"}, tmp_path)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("a scheduler whose agent has no usable token kept running")
    finally:
        _stop(proc)
    assert "VRE_AGENT_TOKEN of at least 32 characters" in (tmp_path / "log.txt").read_text()
