"""The `sweeper` command line: one Typer app made of a sub-app per command group, each a thin
layer over the packages below (`sweep` trains, `study` reads a study, `predict` uses
checkpoints, `data` looks at images and caches)."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from sweeper.cli import data, predict, study, sweep
from sweeper.cli.common import set_debug

# `sweeper --help` lists the commands in the order a user meets them, across the groups
HELP_ORDER = ("run", "recheck", "report", "best", "ensemble", "predict", "import", "studies",
              "trials", "show", "data", "cache")


class _InHelpOrder(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(HELP_ORDER))


app = typer.Typer(cls=_InHelpOrder, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Hyperparameter sweeps for fine-tuning image classifiers.")


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    import optuna

    set_debug(debug)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sweeper reports trials itself


for group in (sweep, study, predict, data):
    app.add_typer(group.app)  # no name: the group's commands join the top level
