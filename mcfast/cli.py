"""`mcfast` command line: one sub-command per module in ``mcfast.commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed args, returns an exit code). Errors meant
for users are raised as :class:`mcfast.errors.McfastError` and printed as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from mcfast.errors import McfastError, McfastWarning

# Order is the order shown by --help.
COMMANDS = ["demo", "train", "sample", "synthesize", "phantoms", "prepare", "info", "export", "evaluate", "turing"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcfast",
        description="Annotated synthetic lung CT slices and mammograms: an improved DDPM steered by "
                    "multi-condition, weighted ILVR guidance, with fused guidance kernels.",
    )
    from mcfast import __version__
    parser.add_argument("--version", action="version", version=f"mcfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mcfast.commands.{name}")
        module.register(sub)
    return parser


def _one_line_warnings(command: str, default):
    """Show mcfast's own warnings as one line like its errors (Python's format adds a source line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, McfastWarning):
            print(f"mcfast {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
            return int(args.func(args) or 0)
    except McfastError as exc:
        print(f"mcfast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mcfast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
