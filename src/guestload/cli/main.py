"""Command line: ``guestload serve``, ``probe``, ``bundle``, ``guestload --version``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from guestload.cli.bundle import print_bundle
from guestload.cli.daemon import make_poller, run
from guestload.cli.flags import EXIT_USAGE, build_parser, settings_from_args
from guestload.cli.probe import print_probe
from guestload.logs import configure_logging
from guestload.settings import SettingsError
from guestload.sources.catalog import make_source
from guestload.web.errors import WebConfigError
from guestload.web.reload import WebConfigReloader


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and validate the flags, then run the subcommand; bad flags exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bundle":
        return print_bundle(Path(args.output))
    try:
        settings = settings_from_args(args)
    except SettingsError as error:
        parser.exit(EXIT_USAGE, f"guestload: error: {error}\n")
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    if args.command == "probe":
        source = make_source(settings)
        return print_probe(
            make_poller(settings, source, None),
            advice=source.unreachable_advice,
            output=args.output,
        )
    web_config = None
    if settings.web_config_file:
        try:
            web_config = WebConfigReloader(Path(settings.web_config_file))
        except WebConfigError as error:
            parser.exit(EXIT_USAGE, f"guestload: error: --web.config.file: {error}\n")
    return run(settings, web_config=web_config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
