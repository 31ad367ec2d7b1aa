"""Shared CLI plumbing: consoles, error handling, the --debug switch.

Every expected failure ends as one red line and a non-zero exit code: HcoError, any OSError
(a read-only or full disk, a file where a folder should be: its message names the path),
pydantic validation errors of options, Typer's usage errors (:class:`OneLineErrors`) and
Ctrl-C (exit code 130, saying what was kept).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from typer.core import TyperGroup

from hco_cli.errors import HcoError, exit_code

F = TypeVar("F", bound=Callable[..., Any])
# Wide enough for any table: logs, CI and pipes keep every column whole (nothing to fit).
UNBOUNDED_WIDTH = 1000
INTERRUPTED = ("interrupted; outputs are written whole or not at all, so nothing half-written "
               "was left")
# Click's exception base class, reached through Typer's public BadParameter: Typer vendors
# Click in some versions and depends on it in others.
_CLICK_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class AdaptiveConsole(Console):
    """A console as wide as the terminal, and unbounded when output is not a terminal (unless
    COLUMNS says otherwise), so tables in logs and pipes are never cut."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._width is not None or "COLUMNS" in os.environ:
            return size
        return ConsoleDimensions(UNBOUNDED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = AdaptiveConsole()
err_console = Console(stderr=True)

_state = {"debug": os.environ.get("HCO_DEBUG", "") not in ("", "0")}


def set_debug(value: bool) -> None:
    _state["debug"] = value


def debug_enabled() -> bool:
    return _state["debug"]


def one_line(text: str) -> str:
    """``text`` with its lines joined, so that an error stays one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(message: str, *, code: int = 1) -> typer.Exit:
    """Print one red error line and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/bold red] {escape(one_line(message))}", soft_wrap=True)
    return typer.Exit(code=code)


def describe(exc: BaseException) -> str:
    """The message of an expected failure; an OSError names its path (or paths)."""
    if isinstance(exc, ValidationError):
        # Deferred: the config module loads torch (optimizer checks), needed here only on error.
        from hco_cli.config import describe_error

        return describe_error(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = "" if exc.filename is None else f": {exc.filename}"
        also = "" if exc.filename2 is None else f" -> {exc.filename2}"
        return f"{exc.strerror}{where}{also}"
    return str(exc) or type(exc).__name__


def handle_errors(func: F) -> F:
    """Turn HcoError, OSError, option validation errors and Ctrl-C into one red line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (HcoError, OSError, ValidationError) as exc:
            if debug_enabled():
                raise
            raise fail(describe(exc)) from None
        except KeyboardInterrupt as exc:
            if debug_enabled():
                raise
            raise fail(str(exc) or INTERRUPTED, code=exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]


class OneLineErrors(TyperGroup):
    """A command group whose usage errors (unknown option, bad value, missing argument) are
    one red line and exit code 1, like every other bad input, instead of a usage panel."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _CLICK_ERROR as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _CLICK_ERROR as exc:
            raise _usage_error(exc) from None


def _usage_error(exc: Exception) -> BaseException:
    if type(exc).__name__ == "NoArgsIsHelpError":  # `hco prepare` alone: help, as Typer does
        return exc
    ctx = getattr(exc, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    return fail(f"{getattr(exc, 'format_message', exc.__str__)()}{hint}")
