"""Exit codes and expected failures of the command line.

An expected failure (the server is unreachable or says no, a dataset or device this machine
cannot provide) prints one line naming the problem and the fix, and exits with its code; only
``--debug`` shows the traceback. Anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import traceback
from typing import Any

import httpx
import typer
from typer.core import TyperGroup

# Documented in README.md ("Exit codes"): scripts branch on these.
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1  # the run failed or was cancelled; a server error
EXIT_USAGE = 2  # bad arguments or config, a dataset or device this machine cannot provide
EXIT_DIVERGED = 3  # divergence is a result, not a crash
EXIT_UNREACHABLE = 4  # no NormLab service answers at the URL

_STATUS_EXIT = {"succeeded": EXIT_SUCCEEDED, "diverged": EXIT_DIVERGED}


def exit_code(status: str) -> int:
    """The exit code of a finished run's status."""
    return _STATUS_EXIT.get(status, EXIT_FAILED)


class CliError(Exception):
    """An expected failure: ``message`` is printed as is (one line per problem)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def unreachable(url: str, exc: httpx.TransportError) -> CliError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CliError(
        f"cannot reach the NormLab service at {url} ({reason}): start it with `normlab serve`, "
        "or point --url (NORMLAB_URL) at a running one",
        EXIT_UNREACHABLE,
    )


class Debug:
    """Whether ``--debug`` was given (set by the command line's callback)."""

    enabled = False


class ErrorHandlingGroup(TyperGroup):
    """Turns expected failures into their one-line message and exit code."""

    def invoke(self, ctx: Any) -> Any:  # a click context (typer ships its own click)
        try:
            return super().invoke(ctx)
        except CliError as exc:
            if Debug.enabled:
                traceback.print_exc()
            typer.echo(exc.message, err=True)
            raise typer.Exit(exc.code) from None
