"""Errors that reach the user as one line, with the exit code the CLI should use."""

from __future__ import annotations


class NeurofuseError(Exception):
    """A problem with the user's input or environment (runtime failure, exit code 1)."""

    exit_code = 1


class InputError(NeurofuseError):
    """Bad input that the user must fix: unreadable file, mismatched geometry, NaN, ... (exit 1)."""


class UsageError(NeurofuseError):
    """Wrong invocation: unknown method, missing output folder, output exists (exit code 2)."""

    exit_code = 2


# Library messages name the library's keywords in backticks; the CLI prints its own flags for them.
CLI_SPELLING = {
    "`resample=True`": "--resample",
    "`overwrite=True`": "--overwrite",
    "`weights=FILE`": "-O weights=FILE",
    "`pretrained=TAG`": "--pair TAG",
    '`split="all"`': "--split all",
    "`a=DIR, b=DIR`": "--a DIR --b DIR",
    "`pattern=(A, B)`": "--pattern A B",
}


def cli_message(text: str) -> str:
    """A library message with its keywords (`resample=True`, ...) in the CLI's spelling (--resample, ...)."""
    for keyword, flag in CLI_SPELLING.items():
        text = text.replace(keyword, flag)
    return text


class ResultError(NeurofuseError):
    """A method produced an unusable result (NaN/Inf, constant from non-constant inputs); nothing is written."""
