"""Helpers the commands share: argparse value types that name the option, one-line usage errors, and the
one reading of a ``--device`` option."""
from __future__ import annotations

import argparse

from mcfast.errors import InputError


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a bad option value as one line naming the option (exit code 2), like every
    other input error, instead of argparse's usage block followed by the error."""
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (see '{parser.prog} --help')\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts that must be >= 1 (argparse adds the option's name to the error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def resolve_device(spec: str | None, option: str = "--device", default: str = "auto"):
    """The torch device ``spec`` names, checked: a bad name, CUDA without a GPU or a GPU index beyond the
    ones present is one line naming the option, not a traceback from deep in torch.

    ``spec=None`` gives ``default``: "auto" (cuda when available, else cpu) or a device name.
    """
    import torch

    if spec is None:
        if default == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        spec = default
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"{option} {spec!r}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InputError(f"{option} {spec}: {why}; use {option} cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"{option} {spec}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
        return device
    raise InputError(f"{option} {spec}: mcfast runs on cpu or cuda, not {device.type}")
