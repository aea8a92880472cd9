"""Start openai_api.py in a child process on 127.0.0.1 and wait until it answers: for tests and benchmarks.

    with running_server("--num_slots", "4") as base_url:      # e.g. http://127.0.0.1:40123
        ...

The server is stopped (SIGINT, as Ctrl-C: uvicorn shuts down cleanly; killed if it does not) when the block ends.
"""
from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "openai_api.py"
HEALTH_POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 30


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; another process could take it before the server does)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def health(base_url: str) -> dict:
    """GET /health as a dict (an error status's JSON body too)."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as problem:
        return json.load(problem)


@contextlib.contextmanager
def running_server(*args: str, timeout: float = 900, launcher: tuple[str, ...] = (),
                   log=None) -> Iterator[str]:
    """The base URL (no /v1) of a server started with `args` (a port is chosen unless --port is given).
    `launcher` prefixes the command (e.g. torchrun's); `log` receives the server's output (default: discarded).
    Fails with the server's last output when it exits or does not answer within `timeout` seconds."""
    if "--port" not in args:
        args = (*args, "--port", str(free_port()))
    port = args[args.index("--port") + 1]
    base_url = f"http://127.0.0.1:{port}"
    command = [*(launcher or (sys.executable,)), str(SCRIPT), "--host", "127.0.0.1", *args]
    process = subprocess.Popen(command, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    try:
        _wait_until_up(process, base_url, timeout)
        yield base_url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(process: subprocess.Popen, base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        try:
            health(base_url)
            return
        except (OSError, ValueError):
            time.sleep(HEALTH_POLL_SECONDS)
    raise RuntimeError(f"the server did not answer {base_url}/health within {timeout:g} s")
