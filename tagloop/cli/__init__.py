"""The ``tagloop`` command line: one click group, one subcommand per stage.

Exit codes: 0 success, 1 some inputs failed (each named on stderr), 2 usage or config error.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..config import find_config, read_config
from ..errors import TagloopError
from .config import build_default_map
from .errors import interrupted, to_command_error

#: Subcommands in the order of the loop, each imported only when it is used (or listed by --help).
COMMANDS = {
    "tag": (".tag", "tag_command"),
    "convert-deepdanbooru": (".tag", "convert_deepdanbooru_command"),
    "prompt": (".prompt", "prompt_command"),
    "generate": (".generate", "generate_command"),
    "upscale": (".upscale", "upscale_command"),
    "reproduce": (".reproduce", "reproduce_command"),
    "report": (".reproduce", "report_command"),
    "retag": (".retag", "retag_command"),
    "stats": (".retag", "stats_command"),
    "serve": (".serve", "serve_command"),
    "info": (".info", "info_command"),
    "demo": (".demo", "demo_command"),
}


class TagloopGroup(click.Group):
    """Lists commands in the order of the loop, imports each when needed, maps errors to exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS) + [name for name in self.commands if name not in COMMANDS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            import importlib

            module, attr = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module, __name__), attr), name)
        return self.commands.get(name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TagloopError as e:
            raise to_command_error(e) from None
        except KeyboardInterrupt:
            raise interrupted() from None


@click.group(cls=TagloopGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="tagloop")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file whose keys fill option defaults (default: ./tagloop.toml, then the user config folder).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """tagloop: image -> tagger -> filters -> prompt -> generator -> tagger again -> report.

    \b
    Example:
      tagloop tag images/ --model SmilingWolf/wd-swinv2-tagger-v3 --format json
    """
    path = find_config(config_path)
    if path is not None:
        data = read_config(path)
        ctx.default_map = build_default_map(main, ctx, path, data)
        ctx.meta["config_path"] = path


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
