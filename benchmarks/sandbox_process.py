"""The Klaviyo sandbox as a process of its own for the benchmarks, so its work never shares a
core's event loop with the code being measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from agents.devstack.broker import free_port
from agents.devstack.processes import ChildProcess


class SandboxProcess:
    def __init__(self, workdir: Path, key: str, scale: float = 1.0) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {"KLAVIYO_API_KEY": key, "RETURNSYNC_LOG_LEVEL": "warning"}
        args = ["sandbox", "--port", str(port), "--rate-limit-scale", str(scale)]
        self.process = ChildProcess(args, env, workdir / "sandbox.log")

    def __enter__(self) -> SandboxProcess:
        self.process.start()
        self.process.wait_http(f"{self.url}/_sandbox/requests", within=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}/_sandbox/{path}", timeout=300, **kwargs)
        response.raise_for_status()
        return response.json()["data"]
