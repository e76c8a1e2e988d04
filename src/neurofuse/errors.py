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


class ResultError(NeurofuseError):
    """A method produced an unusable result (NaN/Inf, constant from non-constant inputs); nothing is written."""
