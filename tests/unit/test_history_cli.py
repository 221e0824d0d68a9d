"""``bpfscope history``: read-only, strict about times, same filters."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bpfscope.cli import cli
from bpfscope.errors import EXIT_USAGE, UserError
from bpfscope.store import FlowSample, Store


def sample(tx: int, raddr: str, container: str) -> FlowSample:
    return FlowSample(
        proto="tcp", family=6, laddr="::ffff:10.0.0.1", lport=5555, raddr=raddr, rport=443,
        pid=42, comm="curl", container=container, tx_bytes=tx,
    )  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "h.db"
    with Store(path, bucket_seconds=10) as s:
        s.add([sample(1, "::ffff:10.9.9.9", "abc123"), sample(2, "fd00::1", "zzz")], time.time())
    return path


def test_history_reads_while_the_writer_has_the_file_open(db: Path) -> None:
    with Store(db, bucket_seconds=10) as writer:
        writer.add([sample(5, "fd00::2", "abc999")], time.time())
        writer.flush()
        out = CliRunner().invoke(
            cli,
            ["history", "--db", str(db), "--json", "--container", "abc", "--cidr", "10.0.0.0/8"],
        )
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    # container is a prefix and ::ffff:10.0.0.1 counts as 10.0.0.1, as in `flows`
    assert sorted(r["tx_bytes"] for r in rows) == [1, 5]


@pytest.mark.parametrize(
    "args", [["--since", "nan"], ["--since", "inf"], ["--since", "-1e308"],
             ["--until", "1e400"], ["--since", "99999999999999999999999d"], ["--cidr", "x"]],
)  # fmt: skip
def test_bad_values_are_usage_errors_not_tracebacks(db: Path, args: list[str]) -> None:
    out = CliRunner().invoke(cli, ["history", "--db", str(db), *args])
    # bpfscope's entry point prints a UserError as one line and exits with its code
    assert isinstance(out.exception, UserError), out.exception
    assert out.exception.exit_code == EXIT_USAGE
