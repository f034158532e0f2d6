"""The `mdp` command: a thin click layer over the library API (each stage is one function call)."""

from __future__ import annotations

import sys

import click

from mdp_cli import __version__
from mdp_cli.errors import MdpError


class _Group(click.Group):
    """Prints MdpError as one line on stderr and exits 2, instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MdpError as exc:
            click.echo(f"mdp: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdp")
def main() -> None:
    """Latency-constrained multidimensional pruning of vision models (MDP, CVPR 2025).

    Stages, each reading and writing artifacts on disk:
    profile (LUT CSV) -> score (importance JSON) -> solve (solution JSON) -> export (pruned model)
    -> finetune. `mdp run CONFIG` runs them in order from a YAML config.
    """


from mdp_cli.commands.stages import COMMANDS as _STAGE_COMMANDS  # noqa: E402
from mdp_cli.solve.cli import pareto_command, solve_command  # noqa: E402  (registered after the group exists)
from mdp_cli.train.cli import eval_command, finetune_command  # noqa: E402

for _command in (*_STAGE_COMMANDS, solve_command, pareto_command, finetune_command, eval_command):
    main.add_command(_command)
