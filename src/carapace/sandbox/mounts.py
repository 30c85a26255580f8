"""Extra mounts for sandboxed runners (spec §7.7, tightened).

An agent group may ask for host folders (``container_configs.additional_mounts``:
``[{hostPath, containerPath?, readonly?}]``). Each one is checked against the owner's
allowlist in ``<home>/carapace.toml``::

    mount_allowlist = ["/srv/photos", { path = "/srv/scratch", read_write = true }]

No allowlist means no extra mounts. A request is refused unless its host path is absolute,
has no ``..``, exists, resolves (symlinks followed) inside an allowed root, and has no
component that looks like a credential store (``.ssh``, ``.aws``, ``.env``, …). Whatever the
allowlist says, ``/``, ``/proc``, ``/sys``, ``/dev`` (and ``/run``, ``/boot``), the carapace
home and the user's credential folders are never mounted, nor any folder containing them,
and a host path that goes through a symbolic link is refused. The bwrap builder checks each
mount it is handed again (``check_not_forbidden``). The sandbox
path is ``/workspace/extra/<containerPath>`` and can never leave that folder. A mount is
read-only unless the request says ``readonly: false`` *and* its root allows read-write.
Refusals are logged and the runner starts without them (NanoClaw's behaviour).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from carapace.errors import ConfigError, ValidationError

logger = logging.getLogger(__name__)

EXTRA_ROOT = PurePosixPath("/workspace/extra")

DEFAULT_BLOCKED_PATTERNS = (
    ".ssh", ".gnupg", ".gpg", ".aws", ".azure", ".gcloud", ".kube", ".docker", "credentials",
    ".env", ".netrc", ".npmrc", ".pypirc", "id_rsa", "id_ed25519", "private_key", ".secret",
)  # fmt: skip


@dataclass(frozen=True)
class AllowedRoot:
    path: Path
    read_write: bool = False


@dataclass(frozen=True)
class MountRequest:
    """One entry of ``additional_mounts`` as the agent group's config states it."""

    host_path: str
    container_path: str | None = None
    readonly: bool = True

    @classmethod
    def from_json(cls, obj: object) -> MountRequest:
        if not isinstance(obj, Mapping):
            raise ValidationError(f"mount must be an object, not {type(obj).__name__}")
        host = obj.get("hostPath", obj.get("host_path"))
        if not isinstance(host, str):
            raise ValidationError("mount needs a string hostPath")
        target = obj.get("containerPath", obj.get("container_path"))
        if target is not None and not isinstance(target, str):
            raise ValidationError("mount containerPath must be a string")
        return cls(host, target, obj.get("readonly", True) is not False)


@dataclass(frozen=True)
class Mount:
    """A validated bind: ``host_path`` (real, existing) shown at ``sandbox_path``."""

    host_path: Path
    sandbox_path: PurePosixPath
    read_only: bool = True


def parse_allowlist(raw: object) -> list[AllowedRoot]:
    """``mount_allowlist`` from ``carapace.toml``: strings or ``{path, read_write}`` tables."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("mount_allowlist must be a list of paths")
    roots: list[AllowedRoot] = []
    for item in raw:
        if isinstance(item, str):
            path, rw = item, False
        elif isinstance(item, Mapping) and isinstance(item.get("path"), str):
            path, rw = item["path"], item.get("read_write", item.get("read-write")) is True
        else:
            raise ConfigError(f"bad mount_allowlist entry: {item!r}")
        if not os.path.isabs(path):
            raise ConfigError(f"mount_allowlist paths must be absolute: {path!r}")
        roots.append(AllowedRoot(Path(os.path.realpath(path)), rw))
    return roots


def load_allowlist(home: Path) -> list[AllowedRoot]:
    """The allowlist of the home at ``home`` (re-read on every call: edits apply at once)."""
    from carapace.config import Home

    return parse_allowlist(Home(home).load_settings().extra.get("mount_allowlist"))


def _blocked(path: Path, patterns: Iterable[str]) -> str | None:
    for part in path.parts:
        for pattern in patterns:
            if pattern in part:
                return pattern
    return None


# Never mounted, whatever the allowlist says: these folders themselves, anything inside them
# (SYSTEM_INSIDE), and for the home and credential folders also anything containing them.
SYSTEM_INSIDE = ("/proc", "/sys", "/dev", "/run", "/boot")
USER_CREDENTIALS = (
    ".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker", ".netrc",
    ".password-store", ".local/share/keyrings", ".config/carapace", ".pypirc", ".npmrc",
    ".git-credentials", ".config/gh",
)  # fmt: skip


def forbidden_paths(home: Path | None) -> list[Path]:
    """Real paths no mount may equal, lie in, or contain: the carapace home and the user's
    credential folders (``~/.ssh`` …)."""
    out: list[Path] = []
    if home is not None:
        out.append(Path(os.path.realpath(home)))
    user_home = os.path.expanduser("~")
    if user_home and user_home != "~":
        out += [Path(os.path.realpath(os.path.join(user_home, c))) for c in USER_CREDENTIALS]
    return out


def check_not_forbidden(real: Path, home: Path | None) -> None:
    """``ValidationError`` when the real path ``real`` is ``/``, a system folder (or inside
    one), or equals, lies in or contains the carapace home or a credential folder."""
    if real == Path("/"):
        raise ValidationError("mounting / is never allowed")
    for sys_dir in SYSTEM_INSIDE:
        if real == Path(sys_dir) or real.is_relative_to(sys_dir):
            raise ValidationError(f"mounting {sys_dir} (or inside it) is never allowed: {real}")
    for bad in forbidden_paths(home):
        if real == bad or real.is_relative_to(bad) or bad.is_relative_to(real):
            raise ValidationError(f"mount {real} would expose {bad}, which is never mounted")


def validate_mount(
    req: MountRequest,
    roots: Sequence[AllowedRoot],
    blocked: Iterable[str] = DEFAULT_BLOCKED_PATTERNS,
    *,
    home: Path | None = None,
) -> Mount:
    """The checked mount for ``req``, or ``ValidationError`` saying why it is refused.
    ``home`` is the carapace home, never mountable (nor anything around it)."""
    host = req.host_path
    if not host or not os.path.isabs(host):
        raise ValidationError(f"mount host path must be absolute: {host!r}")
    if ".." in PurePosixPath(host).parts:
        raise ValidationError(f"mount host path must not contain '..': {host!r}")
    if os.path.realpath(host) != os.path.normpath(host):
        raise ValidationError(f"mount host path must not go through a symbolic link: {host!r}")
    target = req.container_path if req.container_path is not None else PurePosixPath(host).name
    tparts = PurePosixPath(target).parts
    if not target or target.startswith("/") or ":" in target or ".." in tparts or not tparts:
        raise ValidationError(f"bad mount container path: {target!r}")
    real = Path(os.path.realpath(host))
    if not real.exists():
        raise ValidationError(f"mount host path does not exist: {host!r}")
    check_not_forbidden(real, home)
    pattern = _blocked(real, blocked) or _blocked(Path(host), blocked)
    if pattern is not None:
        raise ValidationError(f"mount host path matches blocked pattern {pattern!r}: {host!r}")
    root = next((r for r in roots if real == r.path or real.is_relative_to(r.path)), None)
    if root is None:
        raise ValidationError(f"mount host path is not under an allowed root: {host!r}")
    sandbox_path = EXTRA_ROOT.joinpath(*tparts)
    if not sandbox_path.is_relative_to(EXTRA_ROOT) or sandbox_path == EXTRA_ROOT:
        raise ValidationError(f"bad mount container path: {target!r}")
    return Mount(real, sandbox_path, read_only=req.readonly or not root.read_write)


def validate_mounts(
    requests: Iterable[MountRequest | Mapping[str, object]],
    roots: Sequence[AllowedRoot],
    *,
    context: str = "",
    home: Path | None = None,
) -> list[Mount]:
    """The valid mounts among ``requests``; each refusal is logged and skipped."""
    mounts: list[Mount] = []
    for raw in requests:
        try:
            req = raw if isinstance(raw, MountRequest) else MountRequest.from_json(raw)
            if not roots:
                raise ValidationError("no mount_allowlist in carapace.toml")
            mounts.append(validate_mount(req, roots, home=home))
        except ValidationError as exc:
            logger.warning(
                "additional mount refused%s: %s", f" ({context})" if context else "", exc
            )
    return mounts
