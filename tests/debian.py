"""Debian tools the tests run for real (prometheus, stunnel, openssl): found on PATH, or installed
with apt-get on a fresh machine when running as root. Anywhere else `ToolUnavailable` says how to
install them, and tests turn that into a failure, never a skip.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
_APT_WAIT = ("-o", "DPkg::Lock::Timeout=300")
_apt_lock = threading.Lock()


class ToolUnavailable(RuntimeError):
    """A tool is missing and could not be installed."""


@functools.cache
def debian_tool(package: str, *names: str) -> Path:
    """The first of `names` on PATH, installing Debian's `package` first if need be."""
    with _apt_lock:
        found = _which(names)
        if found:
            return found
        how = f"install Debian's package: `apt-get update && apt-get install -y {package}`"
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise ToolUnavailable(f"{'/'.join(names)} not on PATH and not running as root: {how}")
        if not shutil.which("apt-get"):
            raise ToolUnavailable(f"{'/'.join(names)} not on PATH and there is no apt-get: {how}")
        env = {**os.environ, **_APT_ENV}
        for step in (
            ["apt-get", *_APT_WAIT, "update", "-q"],
            ["apt-get", *_APT_WAIT, "install", "-y", "-q", "--no-install-recommends", package],
        ):
            done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                output = f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                raise ToolUnavailable(f"`{' '.join(step)}` exited {done.returncode}:\n{output}")
        found = _which(names)
        if not found:
            raise ToolUnavailable(f"apt-get installed {package} but {'/'.join(names)} is not on PATH")
        return found


def _which(names: Sequence[str]) -> Path | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return Path(path)
    return None
