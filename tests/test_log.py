"""carapace.log: the runner's loggers, without ``logging`` until something loads it.

The lines a runner writes itself must be the lines ``logging`` would have written (the host
and people read them), and once ``logging`` is loaded everything goes through it. Each case
that depends on ``logging`` not being loaded runs in a fresh interpreter.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap

import pytest

from carapace import log

FMT = "%(asctime)s %(levelname)s [runner %(name)s] %(message)s"


def run(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (``-S``: nothing of ``site`` loads ``logging``)."""
    prelude = f"import sys; sys.path[:0] = {sys.path!r}\n"
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def without_time(text: str) -> list[str]:
    """The lines of ``text``, a log line's date and time ("2026-12-07 12:00:00,123 ") cut."""
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    return [stamp.sub("", line) for line in text.splitlines()]


def test_lines_are_the_lines_logging_writes_and_logging_is_never_loaded() -> None:
    # the same calls once through carapace.log (logging not loaded) and once through
    # logging itself, with the clock fixed: byte for byte the same lines
    calls = """
        L.debug("not shown %d", 1)
        L.info("hello %s and %d", "you", 7)
        L.warning("%(who)s at %(n)d", {"who": "it", "n": 3})
        L.error("100%% sure")
        L.critical("plain")
        L.log(25, "between")
        L.info("%s", "line\\nbreak")
    """
    ours = run(f"""
        import io, time
        time.time = lambda: 1700000000.0427
        from carapace import log
        log.basic_config(level=log.INFO, stream=sys.stdout, fmt={FMT!r})
        L = log.get_logger("carapace.runner.loop")
        {textwrap.indent(textwrap.dedent(calls), "        ").strip()}
        print("LOADED", "logging" in sys.modules, "traceback" in sys.modules)
    """)
    theirs = run(f"""
        import io, time
        time.time = lambda: 1700000000.0427
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format={FMT!r})
        L = logging.getLogger("carapace.runner.loop")
        {textwrap.indent(textwrap.dedent(calls), "        ").strip()}
    """)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    lines = ours.stdout.splitlines()
    assert lines[-1] == "LOADED False False"
    assert lines[:-1] == theirs.stdout.splitlines()
    assert "hello you and 7" in ours.stdout and "not shown" not in ours.stdout
    assert " Level 25 " in ours.stdout


def test_unconfigured_is_logging_unconfigured_warnings_alone_message_only() -> None:
    out = run("""
        from carapace import log
        L = log.get_logger("x")
        L.info("quiet")
        L.warning("loud %s", "one")
        print("LOADED", "logging" in sys.modules)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "loud one\n"
    assert out.stdout == "LOADED False\n"


def test_exception_writes_the_traceback_after_the_line() -> None:
    out = run(f"""
        from carapace import log
        log.basic_config(level=log.INFO, stream=sys.stdout, fmt={FMT!r})
        L = log.get_logger("carapace.runner")
        try:
            {{}}["missing"]
        except KeyError:
            L.exception("fatal error in session %s", "s1")
        L.warning("with one", exc_info=ValueError("given"))
        print("LOADED", "logging" in sys.modules)
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith("ERROR [runner carapace.runner] fatal error in session s1")
    assert lines[1] == "Traceback (most recent call last):"
    assert "KeyError: 'missing'" in lines
    assert any(line.endswith("WARNING [runner carapace.runner] with one") for line in lines)
    assert "ValueError: given" in lines
    assert lines[-1] == "LOADED False"


def test_arguments_that_do_not_fit_are_written_not_raised() -> None:
    out = run(f"""
        from carapace import log
        log.basic_config(level=log.DEBUG, stream=sys.stdout, fmt={FMT!r})
        L = log.get_logger("x")
        L.info("two %s %s", "only-one")
        L.info("%d", "not a number")
        L.info("no placeholder", 5)
        print("done")
    """)
    assert out.returncode == 0, out.stderr
    assert without_time(out.stdout) == [
        "INFO [runner x] two %s %s [log arguments that do not fit it: ('only-one',)]",
        "INFO [runner x] %d [log arguments that do not fit it: ('not a number',)]",
        "INFO [runner x] no placeholder [log arguments that do not fit it: (5,)]",
        "done",
    ]


def test_once_logging_loads_the_configuration_and_the_lines_go_through_it() -> None:
    # an SDK loads logging after the runner configured carapace.log: sync() hands logging
    # the same format and level, so the SDK's own lines look like the runner's
    out = run(f"""
        import time
        from carapace import log
        log.basic_config(level=log.INFO, stream=sys.stdout, fmt={FMT!r})
        L = log.get_logger("carapace.runner")
        L.info("before")
        import logging
        log.sync()
        logging.getLogger("httpx").info("from the sdk")
        logging.getLogger("httpx").debug("below the level")
        L.info("after")
        print("HANDLERS", len(logging.getLogger().handlers))
    """)
    assert out.returncode == 0, out.stderr
    assert without_time(out.stdout) == [
        "INFO [runner carapace.runner] before",
        "INFO [runner httpx] from the sdk",
        "INFO [runner carapace.runner] after",
        "HANDLERS 1",
    ]


def test_a_line_after_logging_loaded_hands_it_the_configuration_without_sync() -> None:
    out = run("""
        from carapace import log
        log.basic_config(level=log.WARNING, stream=sys.stdout, fmt="%(levelname)s|%(message)s")
        import logging
        log.get_logger("a").warning("first")
        logging.getLogger("b").warning("second")
        logging.getLogger("b").info("hidden")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["WARNING|first", "WARNING|second"]


def test_through_logging_records_carry_name_level_and_the_callers_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = log.get_logger("carapace.test.log")
    assert log.get_logger("carapace.test.log") is logger
    with caplog.at_level(logging.DEBUG, logger="carapace.test.log"):
        logger.debug("d %s", 1)
        line = sys._getframe().f_lineno + 1
        logger.warning("w %s", 2)
        logger.log(logging.INFO, "i")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("e")
    records = [r for r in caplog.records if r.name == "carapace.test.log"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("DEBUG", "d 1"), ("WARNING", "w 2"), ("INFO", "i"), ("ERROR", "e"),
    ]  # fmt: skip
    assert records[1].lineno == line and records[1].filename == "test_log.py"
    assert records[3].exc_info is not None and records[3].exc_info[0] is RuntimeError
    assert logger.isEnabledFor(logging.DEBUG) is logging.getLogger(
        "carapace.test.log"
    ).isEnabledFor(logging.DEBUG)


def test_threads_write_whole_lines() -> None:
    out = run(f"""
        import threading
        from carapace import log
        log.basic_config(level=log.INFO, stream=sys.stdout, fmt={FMT!r})
        def work(n):
            L = log.get_logger(f"t{{n}}")
            for i in range(300):
                L.info("line %d of %d %s", i, n, "x" * 200)
        ts = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        [t.start() for t in ts]; [t.join() for t in ts]
        print("LOADED", "logging" in sys.modules)
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines.pop() == "LOADED False"
    assert len(lines) == 6 * 300
    for line in lines:
        assert line.endswith(" " + "x" * 200) and " INFO [runner t" in line


def test_level_names() -> None:
    assert log.level_of("debug") == logging.DEBUG
    assert log.level_of("WARNING") == logging.WARNING
    assert log.level_of("nonsense") == logging.INFO
    assert log.level_of("nonsense", log.ERROR) == logging.ERROR
