"""The `mdp` command: a thin click layer over the library API (each stage is one function call).

The group is also the error boundary: whatever escapes a command becomes one line on stderr and an exit
code, never a traceback (``--debug`` or ``MDP_DEBUG=1`` shows the traceback instead):

- ``MdpError`` (a user error: bad input, missing file, wrong flag): its message, exit 2;
- ``KeyboardInterrupt`` (Ctrl-C): "interrupted", exit 130 (128 + SIGINT, as shells report it);
- ``OSError`` (read-only directory, full disk, permissions): the file and the fix, exit 1;
- anything else (a bug): its type and message and the hint to re-run with ``--debug``, exit 1.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from mdp_cli import __version__
from mdp_cli.errors import MdpError

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

# What to do about the usual environment failures, by errno.
_OS_FIXES = {
    errno.ENOSPC: "no space left on the device; free space or write to another directory",
    errno.EDQUOT: "disk quota exceeded; free space or write to another directory",
    errno.EROFS: "read-only file system; write to another directory (--output / --run-dir / --lut-dir)",
    errno.EACCES: "permission denied; fix the permissions or write to another directory",
    errno.EPERM: "operation not permitted; fix the permissions or write to another directory",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EISDIR: "is a directory, a file was expected; check the path",
    errno.EEXIST: "already exists and is in the way; remove it or choose another path",
}


def debug_requested(ctx: click.Context | None = None) -> bool:
    if os.environ.get("MDP_DEBUG", "").strip() not in ("", "0"):
        return True
    return bool(ctx is not None and ctx.params.get("debug"))


def one_line(text: str) -> str:
    """The message of an error as one line. An error raised in a DataLoader worker comes back as
    "Caught X in DataLoader worker ... Original Traceback ...: the message": keep the message."""
    text = str(text).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def describe_os_error(exc: OSError) -> str:
    """``FILE: what went wrong; the fix`` for an OSError (the file is the artifact being written)."""
    where = exc.filename if exc.filename is not None else None
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    what = _OS_FIXES.get(exc.errno) or (exc.strerror or one_line(str(exc)) or type(exc).__name__)
    return f"{where}: {what}" if where else what


def describe_unexpected(exc: BaseException) -> str:
    message = one_line(str(exc))
    return (f"unexpected {type(exc).__name__}" + (f": {message}" if message else "")
            + " (this is a bug in mdp or an unhandled input; re-run with --debug or MDP_DEBUG=1 for the traceback)")


class _Group(click.Group):
    """Turns every error that escapes a command into one line on stderr and an exit code (module doc), and
    imports a command's module only when that command is used (``LAZY_COMMANDS``)."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS and name not in self.commands:
            import importlib

            module, attr = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own usage errors and exits: click prints them
        except MdpError as exc:
            if debug_requested(ctx):
                raise
            click.echo(f"mdp: error: {one_line(str(exc))}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            if debug_requested(ctx):
                raise
            click.echo("mdp: interrupted (artifacts are written atomically: none is left half-written)",
                       err=True)
            sys.exit(EXIT_INTERRUPTED)
        except OSError as exc:
            if debug_requested(ctx):
                raise
            click.echo(f"mdp: error: {describe_os_error(exc)}", err=True)
            sys.exit(EXIT_FAILURE)
        except Exception as exc:
            if debug_requested(ctx):
                raise
            click.echo(f"mdp: error: {describe_unexpected(exc)}", err=True)
            sys.exit(EXIT_FAILURE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdp")
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors (also MDP_DEBUG=1).")
def main(debug: bool) -> None:
    """Latency-constrained multidimensional pruning of vision models (MDP, CVPR 2025).

    Stages, each reading and writing artifacts on disk:
    profile (LUT CSV) -> score (importance JSON) -> solve (solution JSON) -> export (pruned model)
    -> finetune. `mdp run CONFIG` runs them in order from a YAML config.
    """


# Commands are imported when invoked (or listed by --help): `mdp solve` never imports torch or the pipeline.
LAZY_COMMANDS = {
    "families": "mdp_cli.commands.stages:families_command",
    "space": "mdp_cli.commands.stages:space_command",
    "profile": "mdp_cli.commands.stages:profile_command",
    "score": "mdp_cli.commands.stages:score_command",
    "problem": "mdp_cli.commands.stages:problem_command",
    "calibrate": "mdp_cli.commands.stages:calibrate_command",
    "export": "mdp_cli.commands.stages:export_command",
    "run": "mdp_cli.commands.stages:run_command",
    "solve": "mdp_cli.solve.cli:solve_command",
    "pareto": "mdp_cli.solve.cli:pareto_command",
    "finetune": "mdp_cli.train.cli:finetune_command",
    "eval": "mdp_cli.train.cli:eval_command",
    "report": "mdp_cli.report.cli:report_command",
}
