"""A real container engine for the image test: set up by
scripts/container-engine (Debian's docker.io, a debootstrapped Debian 12 base,
the host's extra CA certificates), the image built with layer caching, and
the compose file's service turned into `docker run` arguments.

The translation refuses any service key it does not know, so a security
setting added to the compose file cannot be left out of the test silently.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "container-engine"
IMAGE = "bpfscope:image-test"

# Service keys that become `docker run` options below.
TRANSLATED = frozenset(
    {"pid", "cap_drop", "cap_add", "security_opt", "read_only", "tmpfs", "volumes", "environment"}
)
# Keys the test deliberately replaces: it builds the image itself (build,
# image), manages the container's life (restart), and uses the host's
# network instead of a published port so that no traffic leaves loopback
# (ports; `command` keeps every argument but --listen's address).
REPLACED = frozenset({"build", "image", "restart", "ports", "command"})


class EngineError(RuntimeError):
    """The engine could not be set up or did not do what was asked."""


def docker_binary() -> str:
    """The client that comes with Debian's engine (it speaks BuildKit to a
    20.10 daemon without the buildx plugin), else whatever is on PATH."""
    if Path("/usr/bin/docker").is_file():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if found is None:
        raise EngineError("no docker client after scripts/container-engine ensure")
    return found


def _script(*args: str, timeout: float) -> str:
    out = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise EngineError(f"scripts/container-engine {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout.strip()


@dataclass
class Engine:
    docker: str
    started_pid: int | None
    base_image: str
    extra_ca: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def set_up(cls) -> Engine:
        t0 = time.monotonic()
        state = _script("ensure", timeout=900)
        started = int(state.split()[1]) if state.startswith("started ") else None
        t1 = time.monotonic()
        base = _script("base", timeout=900)
        ca = _script("ca", timeout=60) or None
        engine = cls(docker_binary(), started, base, ca)
        engine.timings = {"engine": t1 - t0, "base": time.monotonic() - t1}
        return engine

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        out = subprocess.run(
            [self.docker, *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and out.returncode != 0:
            raise EngineError(f"docker {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
        return out

    def build(self) -> None:
        """Build deploy/Dockerfile from the debootstrapped base, with layer caching."""
        t0 = time.monotonic()
        secret = ["--secret", f"id=extra_ca,src={self.extra_ca}"] if self.extra_ca else []
        self.run(
            "build", "--network", "host", "--progress", "plain",
            "--build-arg", f"BASE_IMAGE={self.base_image}", *secret,
            "-f", "deploy/Dockerfile", "-t", IMAGE, str(ROOT),
            timeout=1500,
        )  # fmt: skip
        self.timings["build"] = time.monotonic() - t0

    def knows_bpf_caps(self) -> bool:
        """False where the engine predates CAP_BPF/CAP_PERFMON (Docker < 23)."""
        out = self.run(
            "run", "--rm", "--network", "none", "--cap-drop", "ALL",
            "--cap-add", "BPF", "--cap-add", "PERFMON",
            "--entrypoint", "bpfscope", IMAGE, "--version",
            check=False,
        )  # fmt: skip
        if out.returncode == 0:
            return True
        if "unknown capability" in out.stderr:
            return False
        raise EngineError(f"trial run with CAP_BPF failed otherwise: {out.stderr}")

    def stop_daemon(self) -> None:
        """Stop the dockerd that set_up started (none that was running before)."""
        if self.started_pid is None:
            return
        try:
            os.kill(self.started_pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.started_pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def run_options(service: dict[str, Any], volume: str) -> list[str]:
    """`docker run` options with exactly the service's security settings and
    mounts; the named volume is replaced by ``volume``."""
    unknown = set(service) - TRANSLATED - REPLACED
    if unknown:
        raise EngineError(f"the test does not know how to apply {sorted(unknown)}")
    opts: list[str] = []
    if "pid" in service:
        opts += ["--pid", service["pid"]]
    opts += [a for c in service.get("cap_drop", []) for a in ("--cap-drop", c)]
    opts += [a for c in service.get("cap_add", []) for a in ("--cap-add", c)]
    opts += [a for s in service.get("security_opt", []) for a in ("--security-opt", s)]
    if service.get("read_only"):
        opts.append("--read-only")
    opts += [a for t in service.get("tmpfs", []) for a in ("--tmpfs", t)]
    for v in service.get("volumes", []):
        if v["type"] == "bind":
            ro = ",readonly" if v.get("read_only") else ""
            opts += ["--mount", f"type=bind,source={v['source']},target={v['target']}{ro}"]
        elif v["type"] == "volume":
            opts += ["--mount", f"type=volume,source={volume},target={v['target']}"]
        else:
            raise EngineError(f"unknown volume type {v['type']!r}")
    for key, value in service.get("environment", {}).items():
        opts += ["-e", f"{key}={_substitute(str(value))}"]
    return opts


def _substitute(value: str) -> str:
    """Compose's ${NAME} and ${NAME:-default}."""
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}",
        lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""),
        value,
    )


def serve_command(service: dict[str, Any], listen: str) -> list[str]:
    """The compose command with only --listen's address replaced."""
    cmd = [str(a) for a in service["command"]]
    i = cmd.index("--listen")
    return [*cmd[: i + 1], listen, *cmd[i + 2 :]]
