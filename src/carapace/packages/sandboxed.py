"""The install step that runs INSIDE the install sandbox: ``python -m carapace.packages.sandboxed``.

Reads a plan (JSON on stdin): ``{"dir", "python", "socket", "pip": [...], "npm": [...]}``.
Relays ``127.0.0.1:<port>`` to the host's registry proxy socket (the sandbox has no other
network), makes ``<dir>/venv`` when missing (``python -m venv``: pip comes from the
interpreter's bundled wheel), then installs each package on its own — pip into the venv,
npm with ``--prefix <dir>/npm`` — and prints one JSON line per package:
``{"kind", "name", "ok", "detail"}``. Output of the tools goes to stderr (the host logs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from carapace.unixsock import forward_loopback

CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
STEP_TIMEOUT_S = 600


def _run(argv: list[str], env: dict[str, str]) -> tuple[bool, str]:
    print(f"$ {' '.join(argv)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(argv, env=env, stdout=sys.stderr, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=STEP_TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    sys.stderr.write(proc.stderr)
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()] or lines
    return proc.returncode == 0, (errors[-1] if errors else f"exit code {proc.returncode}")[:300]


def main() -> int:
    plan: dict[str, Any] = json.load(sys.stdin)
    base = str(plan["dir"])
    proxy = f"http://127.0.0.1:{forward_loopback(str(plan['socket']))}"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp/home", "LANG": "C.UTF-8",
           "TMPDIR": "/tmp", "HTTPS_PROXY": proxy, "https_proxy": proxy,
           "NODE_EXTRA_CA_CERTS": CA_FILE, "PIP_NO_INPUT": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "npm_config_update_notifier": "false",
           "npm_config_fund": "false", "npm_config_audit": "false"}  # fmt: skip
    os.makedirs("/tmp/home", exist_ok=True)
    results: list[dict[str, Any]] = []
    pip = [str(p) for p in plan.get("pip") or []]
    npm = [str(p) for p in plan.get("npm") or []]
    venv_python = os.path.join(base, "venv", "bin", "python")
    if plan.get("remove"):
        for name in pip:
            ok, detail = _run([venv_python, "-m", "pip", "uninstall", "-y", name], env)
            results.append({"kind": "pip", "name": name, "ok": ok, "detail": "" if ok else detail})
        for name in npm:
            ok, detail = _run(["npm", "uninstall", "--global", "--prefix",
                               os.path.join(base, "npm"), name], env)  # fmt: skip
            results.append({"kind": "npm", "name": name, "ok": ok, "detail": "" if ok else detail})
        pip, npm = [], []
    if pip and not os.path.exists(venv_python):
        ok, detail = _run([str(plan["python"]), "-m", "venv", os.path.join(base, "venv")], env)
        if not ok:
            for name in pip:
                results.append({"kind": "pip", "name": name, "ok": False,
                                "detail": f"could not make the venv: {detail}"})  # fmt: skip
            pip = []
    cert = ["--cert", CA_FILE] if os.path.exists(CA_FILE) else []
    for name in pip:
        ok, detail = _run([venv_python, "-m", "pip", "install", "--no-cache-dir", "--proxy",
                           proxy, "--index-url", "https://pypi.org/simple", *cert, name], env)  # fmt: skip
        results.append({"kind": "pip", "name": name, "ok": ok, "detail": "" if ok else detail})
    for name in npm:
        ok, detail = _run(["npm", "install", "--global", "--prefix", os.path.join(base, "npm"),
                           "--registry", "https://registry.npmjs.org/", "--proxy", proxy,
                           "--https-proxy", proxy, "--no-audit", "--no-fund", name], env)  # fmt: skip
        results.append({"kind": "npm", "name": name, "ok": ok, "detail": "" if ok else detail})
    for r in results:
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
