"""Loggers for the runner's import graph that do not import :mod:`logging`.

``logging`` and what it loads (``traceback``, ``linecache``, ``tokenize``, ``textwrap``,
``string``, ``weakref``) were ~5 ms of every runner's start (issue 19, runner start), for
a few lines a runner writes. A :class:`Logger` here writes through ``logging`` whenever
``logging`` is loaded in the process (the host, the tests, a runner once a provider's SDK or
anything else has loaded it): same records, handlers, levels and ``caplog``. Until then it
writes the line itself, to the stream :func:`basic_config` named, in its format (``%``
fields ``asctime``, ``levelname``, ``name``, ``message``, as ``logging`` would fill them).

Without :func:`basic_config` it behaves as ``logging`` does unconfigured: warnings and
above, the message alone, to ``sys.stderr``. Once ``logging`` is loaded, the first line
through a :class:`Logger` (or :func:`sync`) hands it the configuration first
(``logging.basicConfig``), so the lines of other libraries' loggers get the same format and
level from then on.

A line that cannot be formatted (``%`` placeholders and arguments that do not match) is
written with its arguments after it, never dropped, never raised to the caller.
"""

from __future__ import annotations

import sys
import threading
import time

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import IO, Any

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
CRITICAL = 50
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR", CRITICAL: "CRITICAL"}
_LEVELS = {name: level for level, name in _NAMES.items()}

_lock = threading.Lock()


class _Config:
    """What :func:`basic_config` was given (``given``; before, ``logging``'s defaults)."""

    level: int = WARNING
    stream: IO[str] | None = None  # None: sys.stderr at each write (as logging's last resort)
    fmt: str = "%(message)s"
    given: bool = False
    handed: bool = False  # given to logging.basicConfig already


_config = _Config()


def level_of(name: str, default: int = INFO) -> int:
    """A level by its name (``"debug"``, ``"INFO"`` …), ``default`` for any other."""
    return _LEVELS.get(str(name).upper(), default)


def basic_config(*, level: int, stream: IO[str], fmt: str) -> None:
    """The process's log configuration (as ``logging.basicConfig(level=, stream=,
    format=)``); handed to ``logging`` at once when it is loaded, else when it is."""
    with _lock:
        _config.level, _config.stream, _config.fmt = level, stream, fmt
        _config.given, _config.handed = True, False
    sync()


def _logging() -> Any:
    """The ``logging`` module once it is loaded and fully initialised, with the
    configuration handed to it; None before."""
    std = sys.modules.get("logging")
    if std is None or not hasattr(std, "captureWarnings"):  # absent, or still importing
        return None
    if _config.given and not _config.handed:
        with _lock:
            if not _config.handed:
                _config.handed = True
                std.basicConfig(level=_config.level, stream=_config.stream, format=_config.fmt)
    return std


def sync() -> None:
    """Hand the configuration to ``logging`` if it is loaded (a runner calls this after
    loading code whose libraries log: their lines take the runner's format from then)."""
    _logging()


def _message(msg: object, args: tuple[Any, ...]) -> str:
    text = str(msg)
    if not args:
        return text
    # "%(key)s" with one mapping, as logging does
    values = args[0] if len(args) == 1 and isinstance(args[0], dict) and args[0] else args
    try:
        return text % values
    except (TypeError, ValueError, KeyError):
        return f"{text} [log arguments that do not fit it: {args!r}]"


def _asctime(now: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def _traceback(exc_info: Any) -> str:
    import traceback  # only for a line with a traceback

    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not exc_info or exc_info[0] is None:
        return ""
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


class Logger:
    """``debug``/``info``/``warning``/``error``/``exception``/``critical``/``log``, as a
    ``logging.Logger`` of the same name (which it is, once ``logging`` is loaded)."""

    __slots__ = ("_std", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._std: Any = None

    def __repr__(self) -> str:
        return f"<carapace.log.Logger {self.name}>"

    def _through(self) -> Any:
        std = self._std
        if std is None:
            module = _logging()
            if module is None:
                return None
            std = self._std = module.getLogger(self.name)
        elif _config.given and not _config.handed:
            _logging()
        return std

    def isEnabledFor(self, level: int) -> bool:
        std = self._through()
        return std.isEnabledFor(level) if std is not None else level >= _config.level

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None) -> None:
        self._log(level, msg, args, exc_info)

    def _log(self, level: int, msg: object, args: tuple[Any, ...], exc_info: Any) -> None:
        std = self._through()
        if std is not None:  # stacklevel: the caller of the method that called this one
            std.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
            return
        if level < _config.level:
            return
        self._write(level, msg, args, exc_info)

    def _write(self, level: int, msg: object, args: tuple[Any, ...], exc_info: Any) -> None:
        now = time.time()
        message = _message(msg, args)
        if exc_info:
            trace = _traceback(exc_info)
            if trace:
                message = f"{message}\n{trace}"
        fields = {"asctime": _asctime(now), "levelname": _NAMES.get(level, f"Level {level}"),
                  "name": self.name, "message": message}  # fmt: skip
        try:
            line = _config.fmt % fields
        except (TypeError, ValueError, KeyError):
            line = f"{fields['asctime']} {fields['levelname']} {self.name}: {message}"
        stream = _config.stream if _config.stream is not None else sys.stderr
        with _lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full stream: as logging's handlers, never the caller's error

    def debug(self, msg: object, *args: Any, exc_info: Any = None) -> None:
        self._log(DEBUG, msg, args, exc_info)

    def info(self, msg: object, *args: Any, exc_info: Any = None) -> None:
        self._log(INFO, msg, args, exc_info)

    def warning(self, msg: object, *args: Any, exc_info: Any = None) -> None:
        self._log(WARNING, msg, args, exc_info)

    def error(self, msg: object, *args: Any, exc_info: Any = None) -> None:
        self._log(ERROR, msg, args, exc_info)

    def critical(self, msg: object, *args: Any, exc_info: Any = None) -> None:
        self._log(CRITICAL, msg, args, exc_info)

    def exception(self, msg: object, *args: Any, exc_info: Any = True) -> None:
        self._log(ERROR, msg, args, exc_info)


_loggers: dict[str, Logger] = {}


def get_logger(name: str) -> Logger:
    """The logger of ``name`` (one per name, as ``logging.getLogger``)."""
    found = _loggers.get(name)
    if found is None:
        found = _loggers.setdefault(name, Logger(name))
    return found
