"""deploy/Dockerfile, read (no Docker engine here, and no hadolint): two
stages on one Debian 12 base (a build argument), the first compiles the BPF
objects and the wheel and installs it with the agent extra into a
virtualenv, the second is a slim runtime with libbpf1 and Python that
copies that virtualenv (no pip in it) and runs the agent by default.
tests/kernel/test_container_image.py builds and runs it on a real engine."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]

    def run(self) -> str:
        return "\n".join(self.args("RUN"))


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            if op == "ARG":
                key, _, value = rest.partition("=")
                global_args[key] = value
        else:
            stages[-1].instructions.append((op, rest.strip()))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def _expand(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def test_two_stages_on_one_debian_12_base(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert [s.name for s in stages] == ["build", "runtime"]
    # Users get the official slim image; a local Debian 12 root can stand in.
    assert args["BASE_IMAGE"] == "debian:bookworm-slim"
    assert [s.image for s in stages] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert _expand(stages[1].image, args) == "debian:bookworm-slim"


def test_extra_ca_certificates_reach_pip_as_a_build_secret(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, (build, _runtime) = dockerfile
    [pip_run] = [r for r in build.args("RUN") if "pip install" in r and "requirements" in r]
    assert pip_run.startswith("--mount=type=secret,id=extra_ca ")
    assert "/run/secrets/extra_ca" in pip_run
    assert "PIP_CERT=" in pip_run
    assert "rm -f /tmp/ca.pem" in pip_run  # not left in the layer


def test_build_stage_compiles_objects_and_the_wheel(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, (build, _runtime) = dockerfile
    run = build.run()
    for pkg in ("clang", "llvm", "make", "libbpf-dev"):
        assert re.search(rf"\b{re.escape(pkg)}\b", run), pkg
    assert "make clean-bpf && make bpf" in run
    assert "python -m build --wheel --no-isolation" in run
    assert ".bpf.o" in run  # the wheel is checked for its objects
    copied = [shlex.split(c)[:-1] for c in build.args("COPY")]
    sources = {s for c in copied for s in c}
    assert sources == {"pyproject.toml", "README.md", "Makefile", "src"}
    for src in sources:
        assert (ROOT / src).exists(), src


def test_makefile_has_the_targets_the_build_uses() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("bpf", "clean-bpf"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target


def test_runtime_has_libbpf_python_and_no_compiler(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, (_build, runtime) = dockerfile
    run = runtime.run()
    assert re.search(r"apt-get install [^&]*\blibbpf1\b", run)
    assert re.search(r"apt-get install [^&]*\bpython3\b", run)
    for tool in ("clang", "llvm", "gcc", "libbpf-dev", "make ", "python3-venv", "pip"):
        assert tool not in run, tool
    assert "rm -rf /var/lib/apt/lists/*" in run
    assert runtime.args("COPY") == ["--from=build /opt/bpfscope /opt/bpfscope"]


def test_the_virtualenv_gets_the_wheel_with_the_agent_extra_and_loses_pip(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, (build, _runtime) = dockerfile
    [extras] = [a for a in build.args("ARG") if a.startswith("EXTRAS=")]
    assert "agent" in extras.removeprefix("EXTRAS=").split(",")
    run = build.run()
    # the extras' requirements come from pyproject.toml, then the wheel itself
    assert "optional-dependencies" in run
    assert '"${EXTRAS}"' in run
    assert "/opt/bpfscope/bin/pip install -r /tmp/requirements.txt" in run
    assert re.search(r"pip install --no-deps [^&]*bpfscope-\*\.whl", run)
    assert "pip check" in run
    assert "pip uninstall -y -q pip setuptools" in run


def test_runtime_runs_the_agent_by_default(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, (_build, runtime) = dockerfile
    [entry] = runtime.args("ENTRYPOINT")
    [cmd] = runtime.args("CMD")
    assert json.loads(entry) == ["bpfscope"]
    cmd_args = json.loads(cmd)
    assert cmd_args == ["serve", "--listen", "0.0.0.0:9464"]
    [expose] = runtime.args("EXPOSE")
    assert cmd_args[-1].endswith(f":{expose}")
    [user] = runtime.args("USER")
    assert user == "0:0"  # caps are granted to uid 0 only; see the comment in the file
    [volume] = runtime.args("VOLUME")
    assert json.loads(volume) == ["/var/lib/bpfscope"]
    [health] = runtime.args("HEALTHCHECK")
    assert "/api/v1/health" in health
    assert f"127.0.0.1:{expose}" in health

    from bpfscope.serve_cli import serve

    ctx = serve.make_context("serve", cmd_args[1:])
    assert ctx.params["listen"] == "0.0.0.0:9464"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    assert patterns[0] == "**"
    for needed in ("pyproject.toml", "README.md", "Makefile", "src/"):
        assert f"!{needed}" in patterns, needed
