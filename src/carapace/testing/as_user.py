"""The normal-user pass of ``make test``: as root under ``CI=true``, the tests whose outcome
depends on who runs them run again as an unprivileged user.

Root is exempt from ``RLIMIT_NPROC``, may enter any namespace, writes any folder and owns
short socket paths; the bugs that only a normal user meets stayed out of a root-only CI
(slirp4netns entering the sandbox's network namespace, socket paths past 107 bytes, a
process limit counting every task of the user). So after the suite, as root under
``CI=true``, this makes a system user (``carapace-ci``), clones the checkout into a folder
of that user's, and runs ``make test-user-subset`` there as that user, with a Python 3.11
the user can run. Any failure (no such Python, a failed install, a failed test) fails the
run; nothing is skipped. As a normal user, or outside CI, it does nothing and says so.

``python -m carapace.testing.as_user [--repo DIR]`` (the Makefile's ``test`` target).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

USER = "carapace-ci"
WORK = Path("/var/tmp/carapace-user-pass")
CANDIDATES = ("python3.11", "/usr/bin/python3.11", "/usr/local/bin/python3.11")


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload, no-any-return]


def ensure_user() -> None:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        run(["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", str(WORK / "home"), "--shell", "/usr/sbin/nologin", USER])  # fmt: skip


def as_user(
    argv: list[str], env: dict[str, str], **kw: object
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as the user with exactly ``env`` (given as the environment, never on a
    command line other users can read; ``runuser`` sets HOME and the like from the
    account, and ``env`` sets HOME back)."""
    cmd = ["runuser", "-u", USER, "--", "env", f"HOME={env['HOME']}", *argv]
    return subprocess.run(cmd, env=env, cwd="/", check=False, **kw)  # type: ignore[call-overload, no-any-return]


def usable_python(env: dict[str, str]) -> str | None:
    """A Python 3.11 the user can run and make a venv with (the first of the candidates)."""
    check = "import sys, ensurepip, venv; sys.exit(sys.version_info[:2] != (3, 11))"
    for name in CANDIDATES:
        path = shutil.which(name)
        if path is None:
            continue
        res = as_user([path, "-c", check], env, capture_output=True)
        if res.returncode == 0:
            return path
    return None


def install_python() -> None:
    """Debian's python3.11 (with its venv module), when apt-get is there."""
    if shutil.which("apt-get") is None:
        return
    quiet = {"stdout": subprocess.DEVNULL}
    run(["apt-get", "update", "-qq"], **quiet)
    run(["apt-get", "install", "-y", "-qq", "python3.11", "python3.11-venv"], **quiet)


PASSED = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NO_PROXY", "no_proxy", "HTTP_PROXY",
          "http_proxy", "HTTPS_PROXY", "https_proxy")  # fmt: skip
PIP_CONFIGS = (".config/pip/pip.conf", ".pip/pip.conf")


def passed_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """What reaches the user's install from root's environment: the package registries'
    settings (``PIP_*``), proxies and certificates, nothing else."""
    return {k: v for k, v in environ.items() if k.startswith("PIP_") or k in PASSED}


def copy_pip_config(home: Path, user_home: Path) -> None:
    """Root's own pip configuration (registries, mirrors), into the user's home: the
    user's install reaches the same package registries as the root pass."""
    for rel in PIP_CONFIGS:
        if (home / rel).is_file():
            (user_home / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(home / rel, user_home / rel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the suite ran as a normal user: no separate normal-user pass")
        return 0
    if os.environ.get("CI") != "true":
        print("note: as root, the normal-user pass (the sandbox and proxy tests again as an "
              "unprivileged user) runs under CI=true; it makes the system user carapace-ci")  # fmt: skip
        return 0
    ensure_user()
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "home").mkdir(parents=True)
    src = WORK / "src"
    run(["git", "-c", f"safe.directory={args.repo.resolve()}", "clone", "-q",
         str(args.repo.resolve()), str(src)])  # fmt: skip
    env = {"HOME": str(WORK / "home"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "LANG": "C.UTF-8", "CI": "true", **passed_env(os.environ)}  # fmt: skip
    copy_pip_config(Path.home(), WORK / "home")
    run(["chown", "-R", f"{USER}:", str(WORK)])
    python = usable_python(env)
    if python is None:
        install_python()
        python = usable_python(env)
    if python is None:
        print(f"error: no Python 3.11 that user {USER} can run (tried {', '.join(CANDIDATES)})",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"normal-user pass: user {USER}, {python}, {src}", flush=True)
    res = as_user(["make", "-C", str(src), "--no-print-directory", "test-user-subset",
                   f"PYTHON={python}"], env)  # fmt: skip
    if res.returncode == 0:
        shutil.rmtree(WORK, ignore_errors=True)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
