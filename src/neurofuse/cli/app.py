"""The `neurofuse` click group and its error policy: one line per failure, no traceback unless --debug."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings

import click

from neurofuse.errors import NeurofuseError, cli_message


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks run (temporary files are removed)."""


def _on_sigterm(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    """While a command runs, SIGTERM unwinds like Ctrl-C instead of killing the process mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line_usage(exc: click.ClickException, command_path: str) -> None:
    click.echo(f"error: {exc.format_message()} (see `{command_path} --help`)", err=True)
    sys.exit(exc.exit_code)


class _App(click.Group):
    """Turns NeurofuseError into `error: <message>` and its exit code (2 usage, 1 runtime)."""

    def make_context(self, info_name, args, parent=None, **extra):
        """Errors in the top-level flags (`neurofuse --bogus`) are one line as well."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `neurofuse`: the help text
        except click.ClickException as exc:
            if "--debug" in args:
                raise
            _one_line_usage(exc, info_name or "neurofuse")

    def invoke(self, ctx: click.Context):
        try:
            with _sigterm_unwinds():
                return super().invoke(ctx)
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(128 + signal.SIGTERM)
        except NeurofuseError as exc:
            if ctx.meta.get("neurofuse.debug"):
                raise
            click.echo(f"error: {cli_message(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as exc:  # bad flags or arguments: one line too, with where to look
            if ctx.meta.get("neurofuse.debug"):
                raise
            _one_line_usage(exc, exc.ctx.command_path if getattr(exc, "ctx", None) is not None else ctx.command_path)
        except (click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # an unexpected failure: still one line unless --debug
            if ctx.meta.get("neurofuse.debug"):
                raise
            click.echo(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=_App, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="neurofuse")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """neurofuse: multimodal medical image fusion (2D and 3D)."""
    ctx.meta["neurofuse.debug"] = debug
    if not debug:  # warnings as one line each, without the source line Python would print
        warnings.formatwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings API)
    return f"warning: {cli_message(str(message))}\n"
