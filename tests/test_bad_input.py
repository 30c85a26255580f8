"""Every bad input to ``carapace`` is one clear line and a non-zero exit, and changes nothing
in the home (issue 14 item 5): generated with hypothesis, through the in-process entry point
and a few real subprocesses; the home is hashed before and after."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carapace.cli import main
from carapace.runner.config import PROVIDER_ALIASES
from carapace.runner.providers import provider_names

CARAPACE = [sys.executable, "-m", "carapace"]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def home_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        st_ = p.lstat()
        h.update(f"{p.relative_to(root)}|{st_.st_mode:o}".encode("utf-8", "surrogateescape"))
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("bad-input") / "home"
    res = CliRunner().invoke(main, ["init", "--home", str(root)])
    assert res.exit_code == 0, res.output
    yield root


def check_refused(home: Path, args: list[str], stdin: str | None = None) -> str:
    """Run in process; the error must be one line, the exit non-zero, the home unchanged."""
    before = home_hash(home)
    res = CliRunner().invoke(main, args, input=stdin, env={"CARAPACE_DEBUG": ""})
    assert res.exception is None or isinstance(res.exception, SystemExit), (args[:4], res)
    assert res.exit_code != 0, (args[:4], res.output[-500:])
    err = [line for line in res.stderr.splitlines() if line.strip()]
    # the header of a Python traceback (a bare "Traceback" may be the bad input echoed back)
    assert "Traceback (most recent call last)" not in res.output
    assert err, (args[:4], res.output[-500:])
    assert len(err[-1]) < 1000
    assert home_hash(home) == before, f"{args[:4]} changed the home"
    return err[-1]


# --- generated bad inputs --------------------------------------------------------------------

surrogates = st.text(
    alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4
)
bad_text = st.one_of(
    st.sampled_from(["", " ", "\n", "\t \n"]),
    st.tuples(st.text(max_size=20), surrogates, st.text(max_size=20)).map("".join),
    st.integers(512 * 1024 + 1, 600 * 1024).map(lambda n: "x" * n),
)
bad_seconds = st.one_of(
    st.floats(max_value=-1e-9, allow_nan=False),
    st.sampled_from(["nan", "inf", "-inf", "-0.5", "1e400", "soon", ""]),
)
bad_user = st.one_of(
    st.sampled_from(["", " ", "a b", "x" * 65, "tab\there"]),
    st.tuples(st.text(max_size=5), surrogates).map("".join),
)
huge_int = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1))


@SETTINGS
@given(text=bad_text)
def test_send_refuses_bad_messages(home: Path, text: str) -> None:
    line = check_refused(home, ["send", "--home", str(home), "--timeout", "1", "--", text])
    assert "message" in line


@SETTINGS
@given(seconds=bad_seconds.map(str), which=st.sampled_from(["send", "chat"]))
def test_bad_timeouts(home: Path, seconds: str, which: str) -> None:
    args = [which, "--home", str(home), "--timeout", seconds]
    check_refused(home, [*args, "hi"] if which == "send" else args, stdin="hi\n")


@SETTINGS
@given(user=bad_user, which=st.sampled_from(["send", "chat"]))
def test_bad_sender_handles(home: Path, user: str, which: str) -> None:
    args = [which, "--home", str(home), "--as", user, "--timeout", "1"]
    check_refused(home, [*args, "hi"] if which == "send" else args, stdin="hi\n")


ADMIN_INT_VERBS = [
    ["groups", "list", "--limit"],
    ["tasks", "list", "--limit"],
    ["groups", "config", "update", "main", "--max-messages-per-prompt"],
    ["sessions", "list", "--limit"],
]


@SETTINGS
@given(verb=st.sampled_from(ADMIN_INT_VERBS), number=huge_int)
def test_admin_huge_integers(home: Path, verb: list[str], number: int) -> None:
    line = check_refused(home, ["admin", "--home", str(home), *verb, str(number)])
    assert "error (invalid-args)" in line


@SETTINGS
@given(
    name=st.text(min_size=1, max_size=30).filter(
        lambda s: s.strip().lower() not in {*provider_names(), *PROVIDER_ALIASES}
    ),
    verb=st.sampled_from(
        [
            ["groups", "config", "update", "main", "--provider"],
            ["groups", "update", "main", "--agent-provider"],
        ]
    ),
)
def test_admin_unknown_providers(home: Path, name: str, verb: list[str]) -> None:
    if not name.strip():
        return  # an empty value clears the setting: not an error
    check_refused(home, ["admin", "--home", str(home), *verb, name])


@SETTINGS
@given(word=st.tuples(st.text(max_size=8), surrogates).map("".join))
def test_admin_words_must_be_utf8(home: Path, word: str) -> None:
    line = check_refused(home, ["admin", "--home", str(home), "groups", "get", word])
    assert "UTF-8" in line


@SETTINGS
@given(
    kind=st.sampled_from(["file", "under-file", "nul"]),
    command=st.sampled_from(
        [["init"], ["doctor"], ["status"], ["send", "hi"], ["chat"], ["admin", "groups", "list"]]
    ),
)
def test_unusable_home(home: Path, tmp_path: Path, kind: str, command: list[str]) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("not a home")
    bad = {"file": str(afile), "under-file": str(afile / "home"), "nul": f"{tmp_path}/x\0y"}
    args = [command[0], "--home", bad[kind], *command[1:]]
    before = afile.read_bytes()
    res = CliRunner().invoke(main, args, input="hi\n")
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    # the header of a Python traceback (a bare "Traceback" may be the bad input echoed back)
    assert "Traceback (most recent call last)" not in res.output
    assert afile.read_bytes() == before


def test_unreadable_home() -> None:
    """A home the user cannot read: one line, exit 1 (as root: run as nobody via setpriv)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="carapace-locked-"))  # tmp_path's parents are 0700
    base.chmod(0o755)
    locked = base / "locked"
    locked.mkdir(mode=0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed to test as another user"
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*prefix, *CARAPACE, "--version"], capture_output=True, cwd="/")
        if probe.returncode != 0:  # e.g. a checkout under /root: nobody cannot run it
            pytest.skip("root reads every folder, and user nobody cannot run this checkout")
    try:
        for command in (["doctor"], ["send", "hi"], ["admin", "groups", "list"]):
            res = subprocess.run(
                [*prefix, *CARAPACE, command[0], "--home", str(locked), *command[1:]],
                capture_output=True, text=True, timeout=60, cwd="/",
            )  # fmt: skip
            err = [line for line in res.stderr.splitlines() if line.strip()]
            assert res.returncode == 1 and len(err) == 1, (command, res.stderr)
            assert "permission denied (not readable)" in err[0], err
    finally:
        locked.chmod(0o700)
        shutil.rmtree(base)


# --- carapace.toml --------------------------------------------------------------------------

bad_toml = st.one_of(
    st.binary(max_size=40).map(lambda b: b"\xff" + b),  # never UTF-8
    st.sampled_from(
        [
            b'max_runners = "eight"\n',
            b'runner_idle_exit_s = "soon"\n',
            b"max_runners = 0\n",
            b"max_tries = 99999999999999999999\n",
            b"timezone = 5\n",
            b"max_runners = [1]\n",
            b"= broken",
            b"[x\n",
            b"runner_idle_exit_s = nan\n",
            b"runner_idle_exit_s = inf\n",
            b'timezone = "Mars/Olympus"\n',
            b'timezone = ""\n',
            b'default_provider = "bogus"\n',
            b'runner_backend = "bogus"\n',
        ]
    ),
)


@SETTINGS
@given(
    toml=bad_toml,
    command=st.sampled_from([["init"], ["send", "hi"], ["chat"], ["run"]]),
)
def test_bad_config_is_refused_before_anything(home: Path, toml: bytes, command: list[str]) -> None:
    config = home / "carapace.toml"
    config.write_bytes(toml)
    try:
        line = check_refused(home, [command[0], "--home", str(home), *command[1:]], stdin="hi\n")
        assert "carapace.toml" in line
    finally:
        config.unlink()


def test_doctor_reports_a_bad_config_without_changing_anything(home: Path) -> None:
    config = home / "carapace.toml"
    config.write_bytes(b"\xff\xfe = 1\n")
    before = home_hash(home)
    try:
        res = CliRunner().invoke(main, ["doctor", "--home", str(home)])
        assert res.exit_code == 1 and "bad-config" in res.output, res.output
        assert "Traceback" not in res.output and home_hash(home) == before
    finally:
        config.unlink()


# --- the real command line ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["bench", "proxy", "--n", "0"], ["bench", "roundtrip", "--n", "-5"],
     ["bench", "proxy", "--n", "9" * 25]],
)  # fmt: skip
def test_bench_counts_are_bounded(home: Path, args: list[str]) -> None:
    check_refused(home, args)


@pytest.mark.parametrize(
    "argv",
    [
        [b"send", b"\xff\xfe not utf-8"],
        [b"send", b"   "],
        [b"send", b"--timeout", b"-1", b"hi"],
        [b"admin", b"groups", b"get", b"\xc3\x28"],
        [b"admin", b"groups", b"list", b"--limit", b"9" * 30],
    ],
)
def test_real_processes_print_one_line(home: Path, argv: list[bytes]) -> None:
    before = home_hash(home)
    env = {**os.environ, "CARAPACE_HOME": str(home)}
    env.pop("CARAPACE_DEBUG", None)
    res = subprocess.run(
        [*(a.encode() for a in CARAPACE), *argv], capture_output=True, env=env, timeout=60
    )
    err = [line for line in res.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    assert res.returncode != 0
    errors = [line for line in err if line.lower().startswith("error")]
    assert b"Traceback" not in res.stderr and len(errors) == 1, err
    assert err[-1] == errors[0]  # at most an informational note before it
    assert home_hash(home) == before


def test_unexpected_errors_are_one_line_unless_debugging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import carapace.migrate.doctor as doctor_mod

    def boom(_home: object) -> None:
        raise RuntimeError("something\nunforeseen")

    monkeypatch.setattr(doctor_mod, "diagnose", boom)
    res = CliRunner().invoke(main, ["doctor", "--home", str(tmp_path)], env={"CARAPACE_DEBUG": ""})
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "Error: internal error: RuntimeError: something unforeseen "
        "(set CARAPACE_DEBUG=1 for the traceback)"
    ]
    res = CliRunner().invoke(main, ["doctor", "--home", str(tmp_path)], env={"CARAPACE_DEBUG": "1"})
    assert isinstance(res.exception, RuntimeError)


# --- every admin verb, junk in every option -----------------------------------------------

JUNK = [
    "", " ", "\ud800x", "9" * 25, "-1", "0", "1e999", "null", "[]", "{}", '{"a": 1e999}',
    '{"max_tokens": 99999999999999999999999}', "main", "../../etc", "x" * 5000, "\x00",
    "true", "nan", '[1, 2, "x"]', '{"bash": "allowed", "limits": {"memory_mb": 1e30}}',
    "* * * * *", "99 99 99 99 99", "2026-13-45T99:99", "cli:local", "tg:1", "owner",
]  # fmt: skip


def _admin_commands() -> list[tuple[str, tuple[str, ...]]]:
    from carapace.admin.registry import commands

    return [
        (res.command(verb), tuple(o.flag for o in verb.options))
        for res, verb in commands().values()
    ]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_every_admin_verb_survives_junk(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    home = _fuzz_home(tmp_path_factory)
    command, flags = data.draw(st.sampled_from(_admin_commands()))
    words = [command]
    for flag in flags:
        if data.draw(st.booleans()):
            words += [flag, data.draw(st.one_of(st.sampled_from(JUNK), st.text(max_size=12)))]
    before = home_hash(home)
    res = CliRunner().invoke(
        main, ["admin", "--home", str(home), *words], env={"CARAPACE_DEBUG": ""}
    )
    assert res.exception is None or isinstance(res.exception, SystemExit), (words, res.exception)
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    assert res.exit_code in (0, 1, 2)
    if res.exit_code != 0:
        assert home_hash(home) == before, (words, res.output[-300:])


_FUZZ_HOME: list[Path] = []


def _fuzz_home(factory: pytest.TempPathFactory) -> Path:
    if not _FUZZ_HOME:
        root = factory.mktemp("admin-fuzz") / "home"
        assert CliRunner().invoke(main, ["init", "--home", str(root)]).exit_code == 0
        _FUZZ_HOME.append(root)
    return _FUZZ_HOME[0]
