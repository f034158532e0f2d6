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


def _not_built(stage: str, issue: int):
    def command(**_kwargs):
        raise MdpError(f"'mdp {stage}' is not built yet (tracked in issue {issue})")

    return command


for _stage, _issue, _help in [
    ("profile", 4, "Measure latency lookup tables (LUT CSV) for a model's pruning space."),
    ("score", 4, "Compute importance scores (JSON) on images."),
    ("export", 4, "Cut a physically smaller model from a solution."),
    ("finetune", 6, "Finetune a pruned model."),
    ("run", 4, "Run the stages of a YAML pipeline config in order."),
]:
    main.command(_stage, help=_help + " (not built yet)",
                 context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(
        _not_built(_stage, _issue)
    )

from mdp_cli.vit_cli import vit_group  # noqa: E402  (mdp vit space|profile|score|problem|export|run)

main.add_command(vit_group)

from mdp_cli.solve.cli import solve_command  # noqa: E402  (registered after the group exists)

main.add_command(solve_command)
