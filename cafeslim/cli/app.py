"""The ``cafeslim`` typer app and its entry point.

:func:`main` is the only place that turns a :class:`~cafeslim.errors.CafeslimError` into
``error: <message>`` on stderr and its exit code; commands just raise.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.text import Text

from .. import __version__
from ..errors import CafeslimError
from .check import check_command
from .eval import eval_command
from .export import export_command
from .inspect import inspect_command
from .inspect_bins import inspect_bins_command
from .search import search_command
from .train import train_command

app = typer.Typer(
    name="cafeslim",
    help="Search per-layer widths of torchvision/timm models under a FLOPs budget "
         "(CafeNet, ICLR 2021) and export physically slimmed models.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    # Locals of a failing frame include whole models and tensors: unreadable and slow.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("inspect")(inspect_command)
app.command("check")(check_command)
app.command("export")(export_command)
app.command("inspect-bins")(inspect_bins_command)
app.command("search")(search_command)
app.command("train")(train_command)
app.command("eval")(eval_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cafeslim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Search per-layer widths of torchvision/timm models under a FLOPs budget and export them."""


def _fail(message: str, code: int) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank fails alike: rank 0 says it
        sys.exit(code)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    # One line, whatever the message: scripts grep it and tests count it.
    console.print(Text(" ".join(message.split()), style="red"))
    sys.exit(code)


def main(argv: Optional[List[str]] = None) -> None:
    """Run the command line; never returns (exits with the command's status).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Example:
        >>> main(["inspect", "timm:test_resnet", "--json"])  # doctest: +SKIP
    """
    try:
        app(args=argv, prog_name="cafeslim")
    except CafeslimError as exc:
        _fail(f"error: {exc}" if str(exc) else f"error: {type(exc).__name__}", exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SystemExit as exc:
        # Click turns Ctrl-C inside a command into a silent exit 130; say why.
        if exc.code == 130:
            _fail("interrupted", 130)
        raise
