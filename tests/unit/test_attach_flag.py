"""`--attach` offers only mechanisms the tool's ladder has: a map or
feature name (ringbuf, batch_ops) is a usage error before anything loads."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bpfscope.cli import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["doctor", "--check", "--attach", "ringbuf"],
        ["doctor", "--check", "--attach", "batch_ops"],
        ["serve", "--attach", "ringbuf"],
        ["serve", "--attach", "uprobe"],
    ],
)
def test_non_rung_mechanism_is_a_usage_error(argv: list[str]) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--attach'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("argv", "mechanism"),
    [(["doctor", "--help"], "fentry"), (["serve", "--help"], "fexit")],
)
def test_help_lists_the_rungs(argv: list[str], mechanism: str) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0
    assert mechanism in result.output
    assert "ringbuf" not in result.output
