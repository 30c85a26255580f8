"""The bwrap runner backend, with real bubblewrap (no mocks): what a sandboxed runner can see,
read and write (DESIGN §2, §5; spec §7.4, §7.7, §7.8)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

import carapace
from carapace.db.session import (
    SessionPaths,
    init_session_folder,
    insert_message_in,
    open_inbound,
    open_outbound,
)
from carapace.errors import ConfigError, ValidationError
from carapace.limits import Limits
from carapace.sandbox import (
    AllowedRoot,
    BwrapBackend,
    BwrapHandle,
    Mount,
    MountRequest,
    SandboxSpec,
    bwrap_argv,
    bwrap_unusable_reason,
    choose_backend,
    parse_allowlist,
    validate_mount,
    validate_mounts,
)
from carapace.sandbox import bwrap as bwrap_mod
from carapace.sandbox.process import RunnerSpec

REASON = bwrap_unusable_reason()
needs_bwrap = pytest.mark.skipif(REASON is not None, reason=f"bubblewrap unusable: {REASON}")


@dataclass
class Layout:
    home: Path
    session: SessionPaths
    other_session: SessionPaths
    agent_dir: Path
    other_group: Path
    global_dir: Path
    central: Path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    home = tmp_path / "home"
    central = home / "data" / "v2.db"
    central.parent.mkdir(parents=True)
    sqlite3.connect(central).execute("CREATE TABLE secret(x)").connection.close()
    session = SessionPaths.of(home / "data", "ag-1", "sess-1")
    other = SessionPaths.of(home / "data", "ag-1", "sess-2")
    init_session_folder(session)
    init_session_folder(other)
    groups = home / "groups"
    for name in ("main", "other", "global"):
        (groups / name).mkdir(parents=True)
    (groups / "global" / "CLAUDE.md").write_text("global memory\n")
    (groups / "other" / "notes.md").write_text("other group's notes\n")
    return Layout(
        home, session, other, groups / "main", groups / "other", groups / "global", central
    )


def sandbox(
    lay: Layout,
    code: str,
    *,
    network: bool = False,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[Mount] = (),
) -> SandboxSpec:
    return SandboxSpec(
        session_dir=lay.session.root,
        agent_dir=lay.agent_dir,
        global_dir=lay.global_dir,
        runner_argv=[sys.executable, "-c", textwrap.dedent(code)],
        env=dict(env or {}),
        network=network,
        mounts=mounts,
    )


def run(spec: SandboxSpec, timeout: float = 20) -> dict[str, object]:
    """Run the sandbox; its program prints one JSON object as its last line."""
    res = subprocess.run(bwrap_argv(spec), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


@needs_bwrap
def test_runner_files_writable_inbound_read_only(layout: Layout) -> None:
    code = f"""
    import json, os, sqlite3, carapace
    from pathlib import Path
    from carapace.db.session import SessionPaths, insert_message_out, open_outbound
    paths = SessionPaths(Path({str(layout.session.root)!r}))
    out = {{"carapace": carapace.__file__}}
    conn = open_outbound(paths)
    out["seq"] = insert_message_out(conn, {{"id": "m1", "timestamp": "t", "kind": "chat",
                                           "content": "{{}}"}})
    conn.close()
    (paths.outbox / "m1").mkdir()
    (paths.outbox / "m1" / "a.txt").write_text("hi")
    paths.heartbeat.touch()
    Path("note.md").write_text("agent memory")  # cwd is the agent dir
    def fails(fn):
        try:
            fn()
        except (OSError, sqlite3.Error) as exc:
            return type(exc).__name__ + ": " + str(exc)
        return None
    def write_inbound():
        c = sqlite3.connect(paths.inbound)
        c.execute("INSERT INTO delivered VALUES ('x', NULL, 'delivered', 't')")
        c.commit()
    out["sql_write"] = fails(write_inbound)
    out["file_write"] = fails(lambda: open(paths.inbound, "ab").write(b"x"))
    out["unlink"] = fails(lambda: os.unlink(paths.inbound))
    out["rename"] = fails(lambda: os.rename(paths.inbound, paths.root / "x.db"))
    out["global_write"] = fails(lambda: Path({str(layout.global_dir)!r}, "x").write_text("x"))
    out["global_read"] = Path({str(layout.global_dir)!r}, "CLAUDE.md").read_text()
    out["home"] = os.environ["HOME"]
    print(json.dumps(out))
    """
    out = run(sandbox(layout, code))
    assert out["carapace"] == carapace.__file__
    assert out["seq"] == 1
    for key in ("sql_write", "file_write", "unlink", "rename", "global_write"):
        assert out[key], f"{key} should have failed inside the sandbox"
    assert "readonly" in str(out["sql_write"])
    assert out["global_read"] == "global memory\n"
    assert out["home"] == str(layout.agent_dir)
    # The host sees the runner's writes; inbound.db is untouched.
    conn = open_outbound(layout.session, readonly=True)
    assert [tuple(r) for r in conn.execute("SELECT id FROM messages_out")] == [("m1",)]
    conn.close()
    assert (layout.session.outbox / "m1" / "a.txt").read_text() == "hi"
    assert layout.session.heartbeat.exists()
    assert (layout.agent_dir / "note.md").read_text() == "agent memory"
    inbound = open_inbound(layout.session)
    assert inbound.execute("SELECT COUNT(*) FROM delivered").fetchone()[0] == 0
    inbound.close()


@needs_bwrap
def test_host_commits_to_inbound_are_seen_live_with_inotify(layout: Layout) -> None:
    code = f"""
    import ctypes, json, os, select, sys, time
    from pathlib import Path
    from carapace.db.session import SessionPaths, open_inbound
    paths = SessionPaths(Path({str(layout.session.root)!r}))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    libc.inotify_add_watch(fd, str(paths.inbound).encode(), 0x2 | 0x8)  # MODIFY|CLOSE_WRITE
    conn = open_inbound(paths, readonly=True)
    before = conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0]
    print("ready", flush=True)
    event = bool(select.select([fd], [], [], 60)[0])
    rows = before
    deadline = time.monotonic() + 60
    while rows == before and time.monotonic() < deadline:
        rows = conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0]
        time.sleep(0.02)
    print(json.dumps({{"before": before, "rows": rows, "event": event}}))
    """
    proc = subprocess.Popen(
        bwrap_argv(sandbox(layout, code)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        conn = open_inbound(layout.session)
        insert_message_in(
            conn,
            {
                "id": "in-1",
                "kind": "chat",
                "timestamp": "2026-03-01T12:00:00.000Z",
                "content": '{"text":"hi"}',
            },
        )
        conn.close()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1]) == {"before": 0, "rows": 1, "event": True}


@needs_bwrap
def test_other_host_files_are_invisible(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-must-not-leak")
    monkeypatch.setenv("CARAPACE_TEST_SECRET", "nope")
    user_home = Path.home()
    code = f"""
    import json, os
    def ls(p):
        try:
            return sorted(os.listdir(p))
        except OSError:
            return None
    status = open("/proc/self/status").read().splitlines()
    print(json.dumps({{
        "central": os.path.exists({str(layout.central)!r}),
        "data": ls({str(layout.home / "data")!r}),
        "sessions": ls({str(layout.session.root.parent)!r}),
        "other_session": os.path.exists({str(layout.other_session.inbound)!r}),
        "groups": ls({str(layout.home / "groups")!r}),
        "other_group": os.path.exists({str(layout.other_group / "notes.md")!r}),
        "user_home": ls({str(user_home)!r}),
        "env": dict(os.environ),
        "cap_eff": [l.split()[1] for l in status if l.startswith("CapEff")][0],
        "pid": os.getpid(),
    }}))
    """
    out = run(sandbox(layout, code, env={"CARAPACE_TZ": "Europe/Berlin"}))
    assert out["central"] is False
    assert out["data"] == ["v2-sessions"]
    assert out["sessions"] == ["sess-1"]
    assert out["other_session"] is False
    assert out["groups"] == ["global", "main"]
    assert out["other_group"] is False
    # The user's home shows at most the path down to the interpreter (e.g. ~/.pyenv/...).
    bound = [p for p in bwrap_mod.python_paths() if p.is_relative_to(user_home)]
    allowed = {p.relative_to(user_home).parts[0] for p in bound if p != user_home}
    listing = out["user_home"]
    assert listing is None or isinstance(listing, list)
    assert set(listing or []) <= allowed
    env = out["env"]
    assert isinstance(env, dict)
    assert "ANTHROPIC_API_KEY" not in env and "CARAPACE_TEST_SECRET" not in env
    assert env["CARAPACE_TZ"] == "Europe/Berlin"
    assert env["HOME"] == str(layout.agent_dir)
    assert int(str(out["cap_eff"]), 16) == 0
    assert out["pid"] != os.getpid() and int(str(out["pid"])) < 10  # own pid namespace


@needs_bwrap
def test_network_off_cannot_reach_host_loopback(layout: Layout) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    code = f"""
    import json, socket
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
        result = "connected"
    except OSError as exc:
        result = type(exc).__name__
    print(json.dumps({{"result": result}}))
    """
    try:
        assert run(sandbox(layout, code))["result"] != "connected"
        # network: true is its own namespace too (slirp4netns attaches; see test_netns.py)
        assert run(sandbox(layout, code, network=True))["result"] != "connected"
    finally:
        server.close()


@needs_bwrap
def test_extra_mounts_appear_under_workspace_extra(layout: Layout, tmp_path: Path) -> None:
    photos = tmp_path / "srv" / "photos"
    photos.mkdir(parents=True)
    (photos / "cat.jpg").write_text("meow")
    roots = [AllowedRoot(tmp_path / "srv")]
    mounts = validate_mounts([{"hostPath": str(photos), "readonly": False}], roots)
    assert mounts == [Mount(photos, PurePosixPath("/workspace/extra/photos"), True)]
    code = """
    import json
    p = "/workspace/extra/photos/cat.jpg"
    try:
        open(p, "a").write("x")
        write = "ok"
    except OSError:
        write = "refused"
    print(json.dumps({"read": open(p).read(), "write": write}))
    """
    assert run(sandbox(layout, code, mounts=mounts)) == {"read": "meow", "write": "refused"}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@needs_bwrap
def test_handle_sigterm_reaches_the_runner_inside(layout: Layout) -> None:
    marker = layout.session.outbox / "terminated"  # the session folder itself is read-only
    code = f"""
    import signal, sys, time
    from pathlib import Path
    def bye(*_):
        Path({str(marker)!r}).write_text("bye")
        sys.exit(3)
    signal.signal(signal.SIGTERM, bye)
    print("ready", flush=True)
    time.sleep(30)
    """

    async def scenario() -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec(
            *bwrap_argv(sandbox(layout, code)),
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        handle = BwrapHandle(proc)
        handle.signal(signal.SIGTERM)
        graceful = await asyncio.wait_for(handle.wait(), 10)
        proc2 = await asyncio.create_subprocess_exec(
            *bwrap_argv(sandbox(layout, code.replace("sys.exit(3)", "pass"))),
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc2.stdout is not None
        await proc2.stdout.readline()
        handle2 = BwrapHandle(proc2)
        inner = bwrap_mod._descendants(proc2.pid)
        handle2.signal(signal.SIGKILL)
        killed = await asyncio.wait_for(handle2.wait(), 10)
        deadline = time.monotonic() + 30
        while [p for p in inner if _alive(p)] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not [p for p in inner if _alive(p)]
        return graceful, killed

    graceful, killed = asyncio.run(scenario())
    assert graceful == 3
    assert marker.read_text() == "bye"
    assert killed != 0


@needs_bwrap
def test_backend_start_runs_module_in_sandbox(layout: Layout, tmp_path: Path) -> None:
    """``BwrapBackend.start`` (the pool's seam) runs ``python -m <module> --session-dir …``."""
    spec = RunnerSpec("sess-1", "ag-1", layout.session.root, layout.agent_dir, provider="mock",
                      idle_exit_s=1, env={"CARAPACE_TZ": "UTC"})  # fmt: skip
    backend = BwrapBackend(layout.home, network=False, module="json.tool", pass_env=())
    assert backend.name == "bwrap" and "network: False" in backend.describe()
    sspec = backend.sandbox_spec(spec)
    assert list(sspec.runner_argv[1:]) == ["-P", "-S", "-m", "json.tool", "--session-dir",
        str(layout.session.root), "--agent-dir", str(layout.agent_dir), "--provider", "mock",
        "--idle-exit", "1"]  # fmt: skip
    assert sspec.global_dir == layout.global_dir and sspec.env == {"CARAPACE_TZ": "UTC"}

    async def scenario() -> int:
        handle = await backend.start(spec)
        assert handle.pid is not None
        return await asyncio.wait_for(handle.wait(), 10)

    # json.tool rejects the runner's options: proof it ran, and its stderr is in the log.
    assert asyncio.run(scenario()) != 0
    assert "usage" in (layout.session.root / ".runner.log").read_text()


def test_backend_start_does_its_file_work_off_the_loop_and_leaks_nothing_on_failure(
    layout: Layout, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A start's file work (the agent folder's binds, the session files, the log) runs in
    a worker thread, so many starts at once never stall the host's loop; when it fails,
    every descriptor it opened is closed again."""
    import threading

    seen: list[int] = []
    real = bwrap_mod.bwrap_argv

    def failing_argv(*args: Any, **kw: Any) -> list[str]:
        seen.append(threading.get_ident())
        real(*args, **kw)  # opens nothing itself; the binds are already open here
        raise OSError("refused for the test")

    monkeypatch.setattr(bwrap_mod, "bwrap_argv", failing_argv)
    spec = RunnerSpec("sess-1", "ag-1", layout.session.root, layout.agent_dir, provider="mock",
                      idle_exit_s=1)  # fmt: skip
    backend = BwrapBackend(layout.home, network=False, pass_env=())

    async def scenario() -> int:
        with pytest.raises(OSError, match="refused for the test"):
            await backend.start(spec)
        return threading.get_ident()

    def ours() -> list[str]:
        """The descriptors open on this test's files (the start's own work: the agent
        folder's binds, the session files, the log), not another test's loop or pipe."""
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)):
                out.append(target)
        return sorted(out)

    before = ours()
    loop_thread = asyncio.run(scenario())
    assert len(seen) == 1 and seen[0] != loop_thread
    assert ours() == before == []


def write_hello(lay: Layout) -> None:
    """One chat message, ``msg-1``, for the session's runner to answer."""
    conn = open_inbound(lay.session)
    insert_message_in(conn, {
        "id": "msg-1", "kind": "chat", "timestamp": datetime.now(UTC).isoformat(),
        "platform_id": "cli:me", "channel_type": "cli",
        "content": '{"text":"hello","sender":"me","senderId":"cli:me"}',
    })  # fmt: skip
    conn.close()


@needs_bwrap
def test_real_runner_replies_inside_sandbox(layout: Layout) -> None:
    write_hello(layout)
    spec = RunnerSpec("sess-1", "ag-1", layout.session.root, layout.agent_dir, provider="mock",
                      idle_exit_s=1, env={"CARAPACE_TZ": "UTC"})  # fmt: skip
    backend = BwrapBackend(layout.home, network=False, pass_env=())

    async def scenario() -> int:
        handle = await backend.start(spec)
        return await asyncio.wait_for(handle.wait(), 120)  # generous: a loaded machine

    code = asyncio.run(scenario())
    log = (layout.session.root / ".runner.log").read_text()
    assert code == 0, log
    out = open_outbound(layout.session, readonly=True)
    rows = [
        tuple(r) for r in out.execute("SELECT kind, in_reply_to, platform_id FROM messages_out")
    ]
    acks = [tuple(r) for r in out.execute("SELECT message_id, status FROM processing_ack")]
    out.close()
    assert ("chat", "msg-1", "cli:me") in rows, log
    assert acks == [("msg-1", "completed")], log


def _max_processes(pid: int) -> int | None:
    """The soft ``Max processes`` of ``pid`` (None: unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max processes"):
            soft = line.split()[2]
            return None if soft == "unlimited" else int(soft)
    raise AssertionError("no Max processes line")


@needs_bwrap
def test_processes_are_bounded_in_the_sandbox_never_for_the_whole_user(layout: Layout) -> None:
    """``RLIMIT_NPROC`` counts the tasks of a user namespace. The host set it before bwrap
    made the sandbox's namespace (until 2026-12-06), where it counted every task of the user,
    a desktop session's threads too: past 512 of them, as a normal user, no sandbox could
    even be made. Now the launcher keeps the host's limit and the runner bounds itself,
    inside its own user namespace."""
    write_hello(layout)
    (layout.agent_dir / "container.json").write_text(
        json.dumps({"settings": {"limits": {"processes": 77}}})
    )
    spec = RunnerSpec("sess-1", "ag-1", layout.session.root, layout.agent_dir, provider="mock",
                      idle_exit_s=1, env={"CARAPACE_TZ": "UTC"},
                      limits=Limits(processes=77))  # fmt: skip
    backend = BwrapBackend(layout.home, network=False, pass_env=())

    async def scenario() -> tuple[int | None, int]:
        handle = await backend.start(spec)
        assert handle.pid is not None
        deadline = time.monotonic() + 60  # the limits are set just before bwrap's exec
        while b"bwrap" not in Path(f"/proc/{handle.pid}/cmdline").read_bytes().split(b"\0")[0]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        launcher = _max_processes(handle.pid)
        return launcher, await asyncio.wait_for(handle.wait(), 120)

    launcher, code = asyncio.run(scenario())
    log = (layout.session.root / ".runner.log").read_text()
    assert code == 0, log
    own = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    assert launcher == (None if own == resource.RLIM_INFINITY else own)
    assert "processes bounded at 77 in this sandbox" in log


@needs_bwrap
@pytest.mark.skipif(os.geteuid() == 0, reason="root is exempt from RLIMIT_NPROC (the normal-user "
                    "pass of make test, under CI=true, runs this)")  # fmt: skip
def test_a_user_with_many_tasks_of_their_own_still_gets_a_sandbox(layout: Layout) -> None:
    """A desktop session has hundreds of threads. With the process limit set before bwrap
    made its namespace they all counted against it, and past 512 no sandbox could be made
    ("Creating new namespace failed: Resource temporarily unavailable")."""
    helper = subprocess.Popen(
        [sys.executable, "-c", "import sys, threading\n"
         "ev = threading.Event()\n"
         "for _ in range(600):\n"
         "    threading.Thread(target=ev.wait, daemon=True).start()\n"
         "print('ready', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert helper.stdout is not None and helper.stdout.readline().strip() == "ready"
        write_hello(layout)
        spec = RunnerSpec("sess-1", "ag-1", layout.session.root, layout.agent_dir,
                          provider="mock", idle_exit_s=1, env={"CARAPACE_TZ": "UTC"})  # fmt: skip
        backend = BwrapBackend(layout.home, network=False, pass_env=())

        async def scenario() -> int:
            handle = await backend.start(spec)
            return await asyncio.wait_for(handle.wait(), 120)

        code = asyncio.run(scenario())
    finally:
        assert helper.stdin is not None
        helper.stdin.close()
        helper.wait(30)
    log = (layout.session.root / ".runner.log").read_text()
    assert code == 0, log
    out = open_outbound(layout.session, readonly=True)
    acks = [tuple(r) for r in out.execute("SELECT message_id, status FROM processing_ack")]
    out.close()
    assert acks == [("msg-1", "completed")], log


def test_the_process_limit_is_set_only_in_a_user_namespace_of_its_own(tmp_path: Path) -> None:
    """In the initial user namespace (``subprocess`` backend) it would count the user's
    every task: not set there. Run in a child: it lowers the limit of the process."""
    initial = tmp_path / "initial"
    initial.write_text("         0          0 4294967295\n")
    own = tmp_path / "own"
    own.write_text("      1000       1000          1\n")
    code = (
        "import resource, sys\n"
        "from carapace.limits import Limits, limit_own_processes\n"
        "before = resource.getrlimit(resource.RLIMIT_NPROC)[0]\n"
        "set_ = limit_own_processes(Limits(processes=77), uid_map=sys.argv[1])\n"
        "print(set_, resource.getrlimit(resource.RLIMIT_NPROC)[0] == before, "
        "resource.getrlimit(resource.RLIMIT_NPROC)[0])\n"
    )
    outs = [
        subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        ).stdout.split()
        for path in (initial, own)
    ]
    assert outs[0][:2] == ["False", "True"]
    assert outs[1][0] == "True" and outs[1][2] == "77"


# --- choosing a backend ------------------------------------------------------------------


def test_choose_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwrap_mod, "bwrap_unusable_reason", lambda bwrap="bwrap": None)
    assert choose_backend(None) == "bwrap"
    assert choose_backend("auto") == "bwrap"
    assert choose_backend("bwrap") == "bwrap"
    assert choose_backend("subprocess") == "subprocess"
    with pytest.raises(ConfigError):
        choose_backend("docker")
    monkeypatch.setattr(bwrap_mod, "bwrap_unusable_reason", lambda bwrap="bwrap": "missing")
    assert choose_backend(None) == "subprocess"
    with pytest.raises(ConfigError, match="missing"):
        choose_backend("bwrap")


@needs_bwrap
def test_choose_backend_prefers_bwrap_here() -> None:
    assert choose_backend(None) == "bwrap"


# --- mount allowlist (spec §7.7) ----------------------------------------------------------


def test_parse_allowlist(tmp_path: Path) -> None:
    roots = parse_allowlist([str(tmp_path), {"path": "/srv", "read_write": True}])
    assert roots == [AllowedRoot(tmp_path.resolve()), AllowedRoot(Path("/srv"), True)]
    assert parse_allowlist(None) == []
    for bad in ("/srv", ["relative/path"], [{"nopath": 1}]):
        with pytest.raises(ConfigError):
            parse_allowlist(bad)


def test_validate_mount_rules(tmp_path: Path) -> None:
    root = tmp_path / "allowed"
    (root / "data").mkdir(parents=True)
    (root / ".ssh").mkdir()
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    ro_roots = [AllowedRoot(root)]
    ok = validate_mount(MountRequest(str(root / "data")), ro_roots)
    assert ok == Mount(root / "data", PurePosixPath("/workspace/extra/data"), True)
    named = validate_mount(MountRequest(str(root / "data"), "a/b"), ro_roots)
    assert str(named.sandbox_path) == "/workspace/extra/a/b"
    # read-write only when both the request and the root allow it
    rw = MountRequest(str(root / "data"), readonly=False)
    assert validate_mount(rw, ro_roots).read_only
    assert not validate_mount(rw, [AllowedRoot(root, True)]).read_only
    refused = [
        MountRequest("relative/data"),
        MountRequest("~/data"),
        MountRequest(f"{root}/data/../data"),
        MountRequest(str(root / "missing")),
        MountRequest(str(root / ".ssh")),
        MountRequest(str(root / "escape")),  # symlink out of the root
        MountRequest(str(tmp_path / "outside")),
        MountRequest(str(root / "data"), "../x"),
        MountRequest(str(root / "data"), "/abs"),
        MountRequest(str(root / "data"), "a:b"),
        MountRequest(str(root / "data"), ""),
    ]
    for req in refused:
        with pytest.raises(ValidationError):
            validate_mount(req, ro_roots)
    # validate_mounts skips (and logs) refusals; no allowlist refuses everything
    reqs: list[MountRequest | Mapping[str, object]] = [
        {"hostPath": str(root / "data")}, {"hostPath": 5}, MountRequest("rel")]  # fmt: skip
    assert len(validate_mounts(reqs, ro_roots)) == 1
    assert validate_mounts(reqs, []) == []


def test_argv_layout_is_as_documented(layout: Layout) -> None:
    argv = bwrap_argv(sandbox(layout, "pass", env={"X": "1"}))
    joined = " ".join(argv)
    root = str(layout.session.root)
    assert f"--ro-bind {root} {root}" in joined  # no entry can be created or replaced
    assert f"--ro-bind {root}/inbound.db {root}/inbound.db" in joined
    assert f"--ro-bind {root}/inbound.db-journal {root}/inbound.db-journal" in joined
    for name in ("outbound.db", "outbound.db-journal", ".heartbeat", "outbox"):
        assert f"--bind {root}/{name} {root}/{name}" in joined
        assert joined.index(f"--ro-bind {root} ") < joined.index(f"--bind {root}/{name} ")
    assert "--share-net" not in argv and "/etc/resolv.conf" not in argv
    assert "--clearenv" in argv and argv[argv.index("X") - 1 :][:3] == ["--setenv", "X", "1"]
    assert str(layout.home / "data" / "v2.db") not in joined
    assert str(layout.other_group) not in joined
    net = bwrap_argv(sandbox(layout, "pass", network=True))
    assert "--share-net" not in net and "/etc/resolv.conf" in net  # slirp's DNS, not the host's


@needs_bwrap
def test_project_settings_folder_is_empty_and_read_only(layout: Layout, tmp_path: Path) -> None:
    """``<group>/.claude`` (Claude Code's hooks, permissions, env) is an empty read-only
    folder in the sandbox, whatever the agent left there; a link planted in its place is
    removed by the host, never followed."""
    planted = layout.agent_dir / ".claude"
    planted.mkdir()
    (planted / "settings.json").write_text('{"hooks": {}}')
    spec = sandbox(
        layout,
        f"""
        import json, os
        d = {str(planted)!r}
        try:
            open(os.path.join(d, "settings.local.json"), "w")
            wrote = True
        except OSError:
            wrote = False
        print(json.dumps({{"entries": os.listdir(d), "wrote": wrote}}))
    """,
    )
    assert run(spec) == {"entries": [], "wrote": False}
    assert (planted / "settings.json").exists()  # the host's file is left alone
    # a link in its place (to a folder the agent controls) is removed before the spawn
    (planted / "settings.json").unlink()
    planted.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "settings.json").write_text("{}")
    planted.symlink_to(elsewhere)
    bwrap_mod.close_fds(bwrap_mod.open_agent_binds(layout.agent_dir))
    assert planted.is_dir() and not planted.is_symlink() and list(planted.iterdir()) == []
    assert (elsewhere / "settings.json").exists()
