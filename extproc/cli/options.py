"""argparse options whose default an ``EXTPROC_*`` variable can override.

argparse parses a string default as it parses the flag's value, after the command line and
only when the flag was not given (its documented rule), so a variable's bad value becomes a
usage error (exit 2) that names the variable. ``flags.py`` declares the flags with these.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from extproc.cli.values import boolean

T = TypeVar("T")

#: A flag's variable: this and the flag's name (``EXTPROC_DNS_RESOLVER``).
ENV_PREFIX = "EXTPROC_"


class FromEnv(str):
    """A flag's default read from an ``EXTPROC_*`` variable.

    argparse parses a string default as it parses the flag's value, after the command line
    and only when the flag was not given (its documented rule), so a bad value becomes a
    usage error; ``typed`` adds the variable's name to it.
    """

    var: str

    def __new__(cls, text: str, var: str) -> FromEnv:
        self = super().__new__(cls, text)
        self.var = var
        return self


def typed(convert: Callable[[str], T]) -> Callable[[str], T]:
    """``convert`` as an argparse type whose errors name the variable a value came from."""

    @functools.wraps(convert)
    def parse(text: str) -> T:
        try:
            return convert(text)
        except argparse.ArgumentTypeError as exc:
            if isinstance(text, FromEnv):
                raise argparse.ArgumentTypeError(f"(from ${text.var}) {exc}") from None
            raise

    return parse


class Switch(argparse.Action):
    """A flag without a value (``--strict``) whose variable may say 1/true or 0/false."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        default: Any = False,
        type: Callable[[str], Any] | None = None,  # noqa: A002 (argparse's keyword)
        help: str | None = None,  # noqa: A002 (argparse's keyword)
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, type=type, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


def from_env(*names: str) -> tuple[str | None, str]:
    """The first set ``EXTPROC_<name>`` (an empty one counts as unset), and its name."""
    for name in names:
        var = ENV_PREFIX + name
        text = os.environ.get(var) or None
        if text is not None:
            return text, var
    return None, ENV_PREFIX + names[0]


def option(
    parser: argparse._ActionsContainer,
    flags: str | tuple[str, ...],
    env: str | tuple[str, ...],
    convert: Callable[[str], Any],
    default: object,
    help: str,  # noqa: A002 (argparse's keyword)
    **kwargs: Any,
) -> None:
    """Add a flag (``--listen``; old names after the first are aliases), its default
    overridable by ``EXTPROC_<env>`` (the first of several names wins, the rest are old
    names still read).

    ``default`` is shown as text and parsed by ``convert`` like a value given on the
    command line, and only if it is used.
    """
    flags = (flags,) if isinstance(flags, str) else flags
    envs = (env,) if isinstance(env, str) else env
    text, var = from_env(*envs)
    shown_default = None if default is None else str(default)
    shown = f"default {shown_default}; ${var}" if shown_default else f"${var}"
    parser.add_argument(
        *flags,
        type=typed(convert),
        default=FromEnv(text, var) if text is not None else shown_default,
        help=f"{help} ({shown})",
        **kwargs,
    )


def switch(parser: argparse.ArgumentParser, flag: str, env: str, help: str) -> None:  # noqa: A002
    """Add an on/off ``flag``; ``EXTPROC_<env>=1`` turns it on."""
    text, var = from_env(env)
    parser.add_argument(
        flag,
        action=Switch,
        type=typed(boolean),
        default=FromEnv(text, var) if text is not None else False,
        help=f"{help} (${var}=1)",
    )
