"""The ``bpfscope`` command. Thin: parse, call a module, print.

Subcommands live with their tools and are imported only when used, so
``bpfscope --help`` stays fast and a tool's heavy dependencies (matplotlib,
FastAPI) load only for that tool.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from typing import Any, Final

import click

from . import __version__
from .errors import explain

__all__ = ["cli", "main"]

# name -> "module:attribute" of a click command
SUBCOMMANDS: Final[dict[str, str]] = {
    "doctor": "bpfscope.doctor_cli:doctor",
    "bench": "bpfscope.bench.cli:bench",
    "syscalls": "bpfscope.syscalls.cli:syscalls",
    "progs": "bpfscope.introspect.cli:progs",
    "maps": "bpfscope.introspect.cli:maps",
    "links": "bpfscope.introspect.cli:links",
    "top": "bpfscope.flows.cli:top",
    "flows": "bpfscope.flows.cli:flows",
    "conns": "bpfscope.flows.cli:conns",
    "drops": "bpfscope.drops.cli:drops",
    "serve": "bpfscope.serve_cli:serve",
    "history": "bpfscope.history_cli:history",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in SUBCOMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        command: click.Command = getattr(module, attr)
        return command


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # libbpf's own chatter (including verifier logs) only with -vv.
    logging.getLogger("bpfscope.libbpf").setLevel(
        logging.DEBUG if verbose >= 2 else logging.WARNING if verbose == 0 else logging.INFO
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bpfscope")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: libbpf debug log).")
@click.option(
    "--btf",
    type=click.Path(dir_okay=False),
    default=None,
    help="BTF file for CO-RE relocations when the kernel has none at /sys/kernel/btf/vmlinux.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, btf: str | None) -> None:
    """eBPF observability: flows, syscalls, BPF introspection, overhead lab."""
    _setup_logging(verbose)
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["btf"] = btf


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # Turn SIGTERM into SystemExit so context managers detach everything.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        rv = cli.main(args=argv, prog_name="bpfscope", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the one place that turns errors into messages
        explained = explain(exc)
        if explained is None:
            raise
        message, code = explained
        click.echo(f"bpfscope: error: {message}", err=True)
        return code
    # ctx.exit(n) comes back as n in non-standalone mode.
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
