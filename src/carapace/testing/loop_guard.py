"""A pytest plugin: every event loop a test file makes is closed by the end of that file.

A loop left unclosed is closed by the garbage collector whenever it is collected, in the
middle of a later test; by then its descriptors' numbers may have been given out again (CI
once saw a test's pipe closed so: EBADF). Every loop made while a file's tests run is held
here (so none is collected meanwhile) until that file's last test is torn down; one still
open and not running then fails that teardown, is closed, and is named with where it was
made. ``pytest -p carapace.testing.loop_guard``, or ``pytest_plugins`` in a conftest."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Generator

import pytest

_LOOPS: list[tuple[asyncio.BaseEventLoop, str]] = []
_REAL_INIT = asyncio.BaseEventLoop.__init__


def _init(self: asyncio.BaseEventLoop, *args: object, **kwargs: object) -> None:
    _REAL_INIT(self, *args, **kwargs)
    frames = [f for f in traceback.extract_stack(limit=24)[:-1]
              if f"{os.sep}asyncio{os.sep}" not in f.filename]  # fmt: skip
    _LOOPS.append((self, "".join(traceback.format_list(frames[-4:]))))


def pytest_configure(config: pytest.Config) -> None:
    asyncio.BaseEventLoop.__init__ = _init  # type: ignore[method-assign,assignment]


def pytest_unconfigure(config: pytest.Config) -> None:
    asyncio.BaseEventLoop.__init__ = _REAL_INIT  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    result = yield
    if nextitem is not None and nextitem.path == item.path:
        return result  # (the file's fixtures may still hold their loops)
    left = [(loop, where) for loop, where in _LOOPS
            if not loop.is_closed() and not loop.is_running()]  # fmt: skip
    _LOOPS.clear()
    for loop, _ in left:
        loop.close()
    if left:
        raise AssertionError(
            f"{len(left)} event loop(s) made in {item.path.name} left open (the garbage "
            "collector would close their descriptors during a later test); made at:\n"
            + "\n".join(where for _, where in left)
        )
    return result
