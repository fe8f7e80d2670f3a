"""Prerequisites of tests (a tool, a package, root): in CI (the ``CI`` environment variable set)
a missing one fails the test; elsewhere the test is skipped, with a warning saying what to get."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., object])


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but empty, 0 or false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(missing: Iterable[str] | str | bool | None, how: str) -> None:
    """Fail (in CI) or skip loudly (elsewhere) when ``missing`` names anything; ``how`` says
    how to get it, e.g. "run scripts/system-deps.sh"."""
    if missing is None or missing is False:
        return
    if isinstance(missing, str):
        missing = [missing]
    names = ["a prerequisite"] if missing is True else [m for m in missing if m]
    if not names:
        return
    message = f"needs {', '.join(names)} ({how})"
    if in_ci():
        pytest.fail(f"{message}: required in CI", pytrace=False)
    warnings.warn(f"SKIPPED, {message}", stacklevel=2)
    pytest.skip(message)


def needs(missing: Callable[[], Iterable[str] | str | bool | None], how: str) -> Callable[[F], F]:
    """Decorator form of ``require``: ``missing()`` is evaluated when the test runs."""

    def wrap(test: F) -> F:
        @functools.wraps(test)
        def checked(*args: object, **kwargs: object) -> object:
            require(missing(), how)
            return test(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return wrap
