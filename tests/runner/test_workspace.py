"""The agent's workspace tools: each tool, its caps, bash modes and every escape we know."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from carapace import record
from carapace.runner.html_text import html_to_text
from carapace.runner.providers.base import ToolResult
from carapace.runner.workspace import Workspace, WorkspaceLimits, WorkspacePolicy
from carapace.runner.workspace_files import glob_to_regex
from carapace.runner.workspace_specs import BASH_DISABLED, WEB_DISABLED

DB_CONTENT = b"SQLite format 3\x00 central db stand-in"


@dataclasses.dataclass
class Home:
    root: Path
    group: Path
    session: Path
    tmp: Path
    global_dir: Path
    central_db: Path
    outside: Path

    def workspace(self, **overrides: Any) -> Workspace:
        policy = WorkspacePolicy(
            group_dir=self.group,
            session_dir=self.session,
            tmp_dir=self.tmp,
            read_only_roots=(self.global_dir,),
            web_private=True,  # the test servers listen on loopback
        )
        return Workspace(record.replace(policy, **overrides))


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    h = Home(
        root=root,
        group=root / "groups" / "main",
        session=root / "sessions" / "main" / "sess-1",
        tmp=tmp_path / "runner-tmp",
        global_dir=root / "groups" / "global",
        central_db=root / "data" / "v2.db",
        outside=tmp_path / "outside",
    )
    for d in (h.group, h.session, h.tmp, h.global_dir, h.central_db.parent, h.outside):
        d.mkdir(parents=True)
    h.central_db.write_bytes(DB_CONTENT)
    (h.global_dir / "shared.md").write_text("shared memory\n")
    (h.session / "inbound.db").write_bytes(b"inbound")
    return h


@pytest.fixture
def ws(home: Home) -> Workspace:
    return home.workspace()


def ok(result: ToolResult) -> str:
    assert not result.is_error, result.content
    return result.content


def err(result: ToolResult) -> str:
    assert result.is_error, result.content
    return result.content


# --- the tool surface ------------------------------------------------------------------------


def test_tools_omit_disabled_bash_and_web(home: Home) -> None:
    names = [t.name for t in home.workspace().tools()]
    assert names == ["read_file", "write_file", "edit_file", "list_files", "grep", "web_fetch"]
    names = [t.name for t in home.workspace(bash="allowed", web=False).tools()]
    assert "bash" in names and "web_fetch" not in names
    for spec in home.workspace(bash="sandboxed").tools():
        assert spec.description and spec.input_schema["type"] == "object"
        assert set(spec.input_schema["required"]) <= set(spec.input_schema["properties"])


def test_disabled_tools_explain_how_to_enable(home: Home) -> None:
    ws = home.workspace(bash="off", web=False)
    text = err(ws.call("bash", {"command": "echo hi"}))
    assert text == BASH_DISABLED
    assert 'bash: "allowed"' in text and "bwrap" in text
    assert err(ws.call("web_fetch", {"url": "http://127.0.0.1/"})) == WEB_DISABLED


def test_bad_arguments_are_error_results(ws: Workspace) -> None:
    assert "missing required argument(s): path" in err(ws.call("read_file", {}))
    assert "path must be a JSON string" in err(ws.call("read_file", {"path": 3}))
    assert "unknown argument(s) file_path" in err(ws.call("read_file", {"file_path": "x"}))
    assert "expected a JSON object" in err(ws.call("read_file", ["x"]))
    assert "offset must be at least 1" in err(ws.call("read_file", {"path": "x", "offset": 0}))
    assert "limit must be a JSON integer" in err(ws.call("read_file", {"path": "x", "limit": 1.5}))
    assert "Unknown tool 'nope'" in err(ws.call("nope", {}))


# --- read_file -------------------------------------------------------------------------------------


def test_read_file_numbers_lines_and_pages(ws: Workspace, home: Home) -> None:
    (home.group / "a.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    text = ok(ws.call("read_file", {"path": "a.txt"}))
    assert text.splitlines()[0] == "     1\tline 1"
    assert text.splitlines()[-1] == "    10\tline 10"
    text = ok(ws.call("read_file", {"path": "a.txt", "offset": 4, "limit": 2.0}))
    assert text.splitlines()[:2] == ["     4\tline 4", "     5\tline 5"]
    assert "offset=6" in text
    assert "past the end" in err(ws.call("read_file", {"path": "a.txt", "offset": 50}))


def test_read_file_caps(home: Home) -> None:
    limits = WorkspaceLimits(read_lines=5, read_bytes=200, line_chars=20)
    ws = home.workspace(limits=limits)
    (home.group / "many.txt").write_text("x\n" * 100)
    text = ok(ws.call("read_file", {"path": "many.txt", "limit": 1000}))
    assert text.count("\tx") == 5 and "offset=6" in text
    (home.group / "wide.txt").write_text(("y" * 50 + "\n") * 20)
    text = ok(ws.call("read_file", {"path": "wide.txt"}))
    assert "y" * 20 + " [line truncated]" in text and "y" * 21 not in text
    assert text.count("\t") < 5 and "offset=" in text  # the byte cap stopped it first


def test_read_file_refusals(ws: Workspace, home: Home) -> None:
    (home.group / "bin.dat").write_bytes(b"\x89PNG\x00\x01\x02")
    (home.group / "empty.txt").write_text("")
    (home.group / "sub").mkdir()
    assert "binary" in err(ws.call("read_file", {"path": "bin.dat"}))
    assert "is a directory" in err(ws.call("read_file", {"path": "sub"}))
    assert "File not found: missing.txt" in err(ws.call("read_file", {"path": "missing.txt"}))
    assert "is empty" in ok(ws.call("read_file", {"path": "empty.txt"}))


# --- write_file / edit_file ------------------------------------------------------------------------


def test_write_file_creates_parents_atomically(ws: Workspace, home: Home) -> None:
    assert "Created notes/2024/a.md" in ok(
        ws.call("write_file", {"path": "notes/2024/a.md", "content": "héllo\n"})
    )
    target = home.group / "notes" / "2024" / "a.md"
    assert target.read_text() == "héllo\n"
    target.chmod(0o600)
    assert "Overwrote" in ok(ws.call("write_file", {"path": str(target), "content": "two"}))
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.md"]  # no temp files left
    ok(ws.call("write_file", {"path": "~/home.txt", "content": "h"}))
    assert (home.group / "home.txt").read_text() == "h"
    ok(ws.call("write_file", {"path": str(home.tmp / "scratch.txt"), "content": "t"}))
    assert (home.tmp / "scratch.txt").read_text() == "t"


def test_write_file_caps_and_read_only(home: Home) -> None:
    ws = home.workspace(limits=WorkspaceLimits(write_bytes=10))
    assert "at most 10" in err(ws.call("write_file", {"path": "big", "content": "x" * 11}))
    assert not (home.group / "big").exists()
    text = err(ws.call("write_file", {"path": str(home.global_dir / "x.md"), "content": "x"}))
    assert "read-only" in text and str(home.global_dir) in text
    assert "shared memory" in ok(ws.call("read_file", {"path": str(home.global_dir / "shared.md")}))
    for name in ("inbound.db", "outbound.db-wal", ".heartbeat"):
        text = err(ws.call("write_file", {"path": str(home.session / name), "content": "x"}))
        assert "belongs to the runner" in text
    assert (home.session / "inbound.db").read_bytes() == b"inbound"
    # Claude Code's project settings (hooks, permissions) are never written by tools
    for rel in (".claude/settings.json", ".claude", "sub/../.claude/hooks.json"):
        text = err(ws.call("write_file", {"path": rel, "content": "{}"}))
        assert "project settings folder" in text
    assert not (home.group / ".claude").exists()


def test_write_through_a_symlink_inside_the_roots_writes_the_target(
    ws: Workspace, home: Home
) -> None:
    (home.group / "real.txt").write_text("old")
    (home.group / "link.txt").symlink_to(home.group / "real.txt")
    ok(ws.call("write_file", {"path": "link.txt", "content": "new"}))
    assert (home.group / "real.txt").read_text() == "new"
    assert (home.group / "link.txt").is_symlink()


def test_edit_file(ws: Workspace, home: Home) -> None:
    f = home.group / "code.py"
    f.write_bytes(b"a = 1\r\nb = 1\r\nc = 2\r\n")
    assert "replaced 1 occurrence." in ok(
        ws.call("edit_file", {"path": "code.py", "old_string": "c = 2", "new_string": "c = 3"})
    )
    assert f.read_bytes() == b"a = 1\r\nb = 1\r\nc = 3\r\n"  # line endings kept
    text = err(ws.call("edit_file", {"path": "code.py", "old_string": "= 1", "new_string": "= 9"}))
    assert "occurs 2 times" in text and "replace_all" in text
    args = {"path": "code.py", "old_string": "= 1", "new_string": "= 9", "replace_all": True}
    assert "replaced 2 occurrences" in ok(ws.call("edit_file", args))
    assert f.read_bytes() == b"a = 9\r\nb = 9\r\nc = 3\r\n"
    assert "not found" in err(
        ws.call("edit_file", {"path": "code.py", "old_string": "zzz", "new_string": "y"})
    )
    assert "nothing to change" in err(
        ws.call("edit_file", {"path": "code.py", "old_string": "a", "new_string": "a"})
    )
    (home.group / "latin1.txt").write_bytes(b"caf\xe9")
    assert "not UTF-8" in err(
        ws.call("edit_file", {"path": "latin1.txt", "old_string": "caf", "new_string": "x"})
    )


# --- list_files / grep -----------------------------------------------------------------------------


@pytest.fixture
def tree(home: Home) -> Path:
    g = home.group
    for rel in ("a.py", "b.txt", "src/c.py", "src/pkg/d.py", "src/pkg/e.md", ".hidden"):
        (g / rel).parent.mkdir(parents=True, exist_ok=True)
        (g / rel).write_text(f"content of {rel}\nTODO: fix {rel}\n")
    (g / "etc").symlink_to("/etc")
    return g


def test_list_files(ws: Workspace, tree: Path) -> None:
    assert ok(ws.call("list_files", {})).splitlines() == [
        ".hidden",
        "a.py",
        "b.txt",
        "etc@",
        "src/",
    ]
    assert ok(ws.call("list_files", {"pattern": "**/*.py"})).splitlines() == [
        "a.py",
        "src/c.py",
        "src/pkg/d.py",
    ]
    assert ok(ws.call("list_files", {"pattern": "*.py"})).splitlines() == ["a.py"]
    assert ok(ws.call("list_files", {"path": "src", "pattern": "pkg/*"})).splitlines() == [
        "src/pkg/d.py",
        "src/pkg/e.md",
    ]
    assert "No entries match" in ok(ws.call("list_files", {"pattern": "**/*.rs"}))
    # The symlink to /etc is listed, never walked.
    assert "passwd" not in ok(ws.call("list_files", {"pattern": "**"}))
    assert "outside the workspace" in err(ws.call("list_files", {"path": "etc"}))
    assert "must be relative" in err(ws.call("list_files", {"pattern": "../*"}))


def test_list_files_cap(home: Home) -> None:
    ws = home.workspace(limits=WorkspaceLimits(list_entries=3))
    for i in range(10):
        (home.group / f"f{i}.txt").write_text("")
    lines = ok(ws.call("list_files", {})).splitlines()
    assert lines[:3] == ["f0.txt", "f1.txt", "f2.txt"]
    assert "Showing 3 of 10" in lines[3]


def test_grep(ws: Workspace, tree: Path) -> None:
    text = ok(ws.call("grep", {"pattern": r"TODO: fix src/\w+/d"}))
    assert text.splitlines() == ["src/pkg/d.py:2:TODO: fix src/pkg/d.py"]
    text = ok(ws.call("grep", {"pattern": "todo", "ignore_case": True, "glob": "*.py"}))
    assert text.splitlines() == [
        "a.py:2:TODO: fix a.py",
        "src/c.py:2:TODO: fix src/c.py",
        "src/pkg/d.py:2:TODO: fix src/pkg/d.py",
    ]
    text = ok(ws.call("grep", {"pattern": "content", "path": "src", "glob": "pkg/*.md"}))
    assert text.splitlines() == ["src/pkg/e.md:1:content of src/pkg/e.md"]
    assert ok(ws.call("grep", {"pattern": "fix", "path": "b.txt"})) == "b.txt:2:TODO: fix b.txt"
    assert "No matches" in ok(ws.call("grep", {"pattern": "root:"}))  # /etc not followed
    assert "Invalid regular expression" in err(ws.call("grep", {"pattern": "("}))


def test_grep_skips_binary_and_large_files_and_caps(home: Home) -> None:
    ws = home.workspace(limits=WorkspaceLimits(grep_file_bytes=100, grep_matches=3))
    (home.group / "bin.dat").write_bytes(b"needle\x00\x01")
    (home.group / "big.txt").write_text("needle\n" * 50)
    (home.group / "small.txt").write_text("needle\n" * 5)
    text = ok(ws.call("grep", {"pattern": "needle"}))
    assert text.splitlines()[:3] == [
        "small.txt:1:needle",
        "small.txt:2:needle",
        "small.txt:3:needle",
    ]
    assert "Stopped at 3 matches" in text
    assert "Skipped 2 binary or large" in text


# --- escapes ----------------------------------------------------------------------------------------


def test_escapes_are_refused(ws: Workspace, home: Home) -> None:
    (home.group / "etc").symlink_to("/etc")
    (home.group / "db").symlink_to(home.central_db)
    (home.group / "out").symlink_to(home.outside)
    (home.group / "dangling").symlink_to(home.outside / "new.txt")
    reads = [
        "../../data/v2.db",
        "/etc/passwd",
        "etc/passwd",
        "db",
        str(home.central_db),
        "out",
        "../global/../../../outside",
        "/proc/self/root/etc/passwd",
    ]
    for path in reads:
        text = err(ws.call("read_file", {"path": path}))
        assert "outside the workspace" in text and repr(path) in text
        assert f"{home.group} (group folder, read-write)" in text
        assert f"{home.global_dir} (extra root, read-only)" in text
    for path in ["db", "out/x.txt", "out/new/dir/x.txt", "dangling", "../escape.txt", "/tmp/x"]:
        assert "outside the workspace" in err(ws.call("write_file", {"path": path, "content": "x"}))
    assert "outside the workspace" in err(
        ws.call("edit_file", {"path": "db", "old_string": "SQLite", "new_string": "pwned"})
    )
    assert "outside the workspace" in err(ws.call("grep", {"pattern": "x", "path": "/etc"}))
    assert "outside the workspace" in err(ws.call("list_files", {"path": ".."}))
    assert home.central_db.read_bytes() == DB_CONTENT
    assert list(home.outside.iterdir()) == []
    assert not (home.group.parent / "escape.txt").exists()


def test_a_sibling_folder_sharing_the_prefix_is_outside(ws: Workspace, home: Home) -> None:
    """Group ``main`` does not reach ``groups/main2/`` (the root check needs its ``/``)."""
    sibling = home.group.parent / (home.group.name + "2")
    sibling.mkdir()
    (sibling / "secret.txt").write_text("other group's\n")
    for path in [str(sibling / "secret.txt"), "../main2/secret.txt"]:
        assert "outside the workspace" in err(ws.call("read_file", {"path": path}))
        assert "outside the workspace" in err(ws.call("write_file", {"path": path, "content": "x"}))
    assert "outside the workspace" in err(ws.call("list_files", {"path": str(sibling)}))
    assert (sibling / "secret.txt").read_text() == "other group's\n"


def test_nul_byte_and_empty_paths_are_refused(ws: Workspace) -> None:
    assert "NUL byte" in err(ws.call("read_file", {"path": "a\x00b"}))
    assert "NUL byte" in err(ws.call("write_file", {"path": "a\x00/etc/passwd", "content": ""}))
    assert "empty" in err(ws.call("read_file", {"path": ""}))
    assert "folder" in err(ws.call("write_file", {"path": "newdir/", "content": ""}))


def test_absolute_paths_inside_a_root_are_accepted(ws: Workspace, home: Home) -> None:
    (home.group / "x.txt").write_text("inside\n")
    assert "inside" in ok(ws.call("read_file", {"path": str(home.group / "x.txt")}))
    assert "inside" in ok(ws.call("read_file", {"path": "sub/../x.txt"}))


# --- bash -------------------------------------------------------------------------------------------


def test_bash_runs_in_the_group_folder_with_a_minimal_env(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake-do-not-leak")
    ws = home.workspace(bash="allowed")
    text = ok(ws.call("bash", {"command": "pwd; env; cat; echo done"}))
    assert "sk-ant-fake-do-not-leak" not in text and "ANTHROPIC" not in text
    real_group = os.path.realpath(home.group)
    assert text.splitlines()[0] == real_group
    assert f"HOME={real_group}" in text
    assert f"TMPDIR={os.path.realpath(home.tmp)}" in text
    assert "done" in text and text.endswith("[Exit code 0.]")  # cat read an empty stdin


def test_bash_reports_failure_exit_code(home: Home) -> None:
    ws = home.workspace(bash="sandboxed")
    text = err(ws.call("bash", {"command": "echo oops >&2; exit 3"}))
    assert text == "oops\n[Exit code 3.]"


def test_bash_output_keeps_head_and_tail(home: Home) -> None:
    ws = home.workspace(bash="allowed", limits=WorkspaceLimits(output_chars=1000))
    text = ok(ws.call("bash", {"command": "seq 1 100000"}))
    assert text.startswith("1\n2\n3\n") and "100000\n[Exit code 0.]" in text
    assert "output truncated" in text and len(text) < 1200


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_dead(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + 30
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_bash_timeout_kills_the_whole_group(home: Home) -> None:
    ws = home.workspace(bash="allowed")
    started = time.monotonic()
    text = err(
        ws.call("bash", {"command": "echo $$; sleep 100 & echo $!; sleep 100", "timeout_s": 1})
    )
    assert time.monotonic() - started < 60  # not the 100 s sleep: generous under load
    assert "Timed out after 1 s" in text and "process group was killed" in text
    pids = [int(x) for x in re.findall(r"^\d+$", text, re.M)]
    assert len(pids) == 2
    assert _wait_dead(pids) == []


def test_bash_background_jobs_do_not_outlive_the_command(home: Home) -> None:
    ws = home.workspace(bash="allowed")
    text = ok(ws.call("bash", {"command": "sleep 100 >/dev/null 2>&1 & echo $!"}))
    pid = int(text.splitlines()[0])
    assert _wait_dead([pid]) == []


def test_bash_timeout_is_clamped_and_validated(home: Home) -> None:
    ws = home.workspace(bash="allowed")
    assert "positive" in err(ws.call("bash", {"command": "true", "timeout_s": 0}))
    assert ok(ws.call("bash", {"command": "true", "timeout_s": 10_000})) == (
        "(no output)\n[Exit code 0.]"
    )


# --- web_fetch ---------------------------------------------------------------------------------------

PAGE = """<!doctype html><html><head><title>Test  Page</title>
<style>body { color: red }</style><script>var secret = 1;</script></head>
<body><h1>Hello</h1><p>First   paragraph
with <a href="/other">a link</a> and <a href="javascript:void(0)">js</a>.</p>
<ul><li>one</li><li>two</li></ul><pre>  keep
    this</pre></body></html>"""


ROUTES: dict[str, tuple[int, str, bytes, dict[str, str]]] = {
    "/page": (200, "text/html; charset=utf-8", PAGE.encode(), {}),
    "/big": (200, "text/plain", b"x" * 5000, {}),
    "/data.json": (200, "application/json", b'{"a": 1}', {}),
    "/image": (200, "image/png", b"\x89PNG\r\n\x1a\n\x00\x00", {}),
    "/missing": (404, "text/html", b"<p>nothing here</p>", {}),
    "/redirect": (302, "text/plain", b"", {"Location": "/page"}),
    "/to-file": (302, "text/plain", b"", {"Location": "file:///etc/passwd"}),
    "/to-ftp": (302, "text/plain", b"", {"Location": "ftp://127.0.0.1/x"}),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, ctype, body, headers = ROUTES.get(self.path, (404, "text/plain", b"no route", {}))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_web_fetch_html_becomes_text(ws: Workspace, server: str) -> None:
    text = ok(ws.call("web_fetch", {"url": f"{server}/redirect"}))
    assert f"URL: {server}/page" in text and "Status: 200 OK" in text
    assert "Title: Test Page" in text
    assert "# Hello" in text and "First paragraph with [a link](" in text
    assert f"({server}/other)" in text
    assert "- one\n- two" in text and "  keep\n    this" in text
    assert "secret" not in text and "color" not in text and "javascript" not in text


def test_web_fetch_other_types_caps_and_errors(home: Home, server: str) -> None:
    ws = home.workspace(limits=WorkspaceLimits(web_bytes=1000))
    assert '{"a": 1}' in ok(ws.call("web_fetch", {"url": f"{server}/data.json"}))
    text = ok(ws.call("web_fetch", {"url": f"{server}/big"}))
    assert "x" * 1000 in text and "x" * 1001 not in text and "exceeded 1000 bytes" in text
    text = ok(ws.call("web_fetch", {"url": f"{server}/big", "max_chars": 10}))
    assert "x" * 10 in text and "x" * 11 not in text and "Truncated" in text
    text = err(ws.call("web_fetch", {"url": f"{server}/missing"}))
    assert "HTTP error 404" in text and "nothing here" in text
    assert "binary" in err(ws.call("web_fetch", {"url": f"{server}/image"}))
    assert "not allowed" in err(ws.call("web_fetch", {"url": f"{server}/to-file"}))
    assert "non-http(s) URL refused" in err(ws.call("web_fetch", {"url": f"{server}/to-ftp"}))
    for url in ("file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "/page"):
        assert "only http and https" in err(ws.call("web_fetch", {"url": url}))
    assert "Cannot fetch" in err(ws.call("web_fetch", {"url": "http://127.0.0.1:1/"}))


# --- pure helpers -------------------------------------------------------------------------------------


def test_html_to_text() -> None:
    title, text = html_to_text(
        "<html><body><p>a<br>b</p><table><tr><td>x</td><td>y</td></tr></table>"
        "<img alt='cat'><a href='https://e.com/'>https://e.com/</a></body>",
        base_url="https://base/",
    )
    assert title == ""
    assert text.splitlines()[:2] == ["a", "b"]
    assert "| x | y" in text and "[image: cat]" in text
    assert "https://e.com/" in text and "](https://e.com/)" not in text


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.py", "a.py", True),
        ("*.py", "src/a.py", False),
        ("**/*.py", "a.py", True),
        ("**/*.py", "src/pkg/a.py", True),
        ("src/**", "src/pkg/a.py", True),
        ("src/?.py", "src/a.py", True),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "b.txt", False),
        ("a+b(c).md", "a+b(c).md", True),
    ],
)
def test_glob_to_regex(pattern: str, path: str, matches: bool) -> None:
    assert (re.fullmatch(glob_to_regex(pattern), path) is not None) is matches


def test_web_fetch_refuses_local_addresses_by_default(home: Home, server: str) -> None:
    ws = home.workspace(web_private=False)
    text = err(ws.call("web_fetch", {"url": f"{server}/data.json"}))
    assert "local or private-network address (127.0.0.1)" in text and "web_private" in text
    assert "private-network" in err(ws.call("web_fetch", {"url": "http://localhost:9/"}))
    assert "private-network" in err(ws.call("web_fetch", {"url": "http://10.1.2.3/"}))
    assert "private-network" in err(ws.call("web_fetch", {"url": "http://[::1]:9/"}))
    assert "private-network" in err(ws.call("web_fetch", {"url": "http://169.254.169.254/"}))
