"""Helpers that keep the CLI cheap to build.

Command modules import their implementation inside the command function, so building the CLI
(`neurofuse --help`, `neurofuse methods`, a classical `fuse`) imports neither torch, the models nor the
metrics; `LazyChoice` lets an option list choices that live in such a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click


class LazyChoice(click.Choice):
    """A `click.Choice` whose choices come from `load()` the first time they are needed (help, parsing)."""

    def __init__(self, load: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._load, self._choices = load, None
        super().__init__((), case_sensitive)

    @property
    def choices(self) -> tuple:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices

    @choices.setter
    def choices(self, value: tuple) -> None:  # click.Choice.__init__ assigns the (empty) tuple
        pass
