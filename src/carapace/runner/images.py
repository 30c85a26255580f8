"""Images a person sent, passed to the model with the turn's prompt.

The host saves each attachment of an inbound message under the session's
``inbox/<message id>/`` and puts its ``localPath`` in the message (Telegram photos, web
uploads, Slack and Discord files). For a batch, ``collect_images`` reads those that are
images — judged by their first bytes, not by the name or the declared type: JPEG, PNG, GIF
or WebP — up to ``MAX_IMAGE_BYTES`` each and ``MAX_IMAGES`` per turn. Files are opened
beneath the session folder without following links (the inbox is writable by the agent).

Providers whose models take images (``takes_images``: anthropic, openai, claude) get them as
image blocks of the turn's user message; for the others (mock) ``describe`` says in text
what was attached and not shown. Images that are skipped (too big, too many, not a
supported image) are said in a note either way. The images are sent with their turn only:
the stored conversation keeps the text (which names each file's path), not the bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from carapace import safefs
from carapace.log import get_logger
from carapace.record import field, record
from carapace.runner.inbound import InRow

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


logger = get_logger(__name__)

# base64 of 3.75 MB is 5 MB, the Anthropic API's cap per image (OpenAI's is larger)
MAX_IMAGE_BYTES = 3_750_000
MAX_IMAGES = 8
CHAT_KINDS = ("chat", "chat-sdk")
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


@record(frozen=True)
class Image:
    name: str
    media_type: str
    data: str  # base64
    size: int

    def block(self) -> dict[str, str]:
        """The provider-neutral form (``{"media_type", "data"}``, as tool-result images)."""
        return {"media_type": self.media_type, "data": self.data}


@record
class Collected:
    images: list[Image] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: why"

    def note(self) -> str:
        """The text said about images that were not sent (empty when none were skipped)."""
        if not self.skipped:
            return ""
        return "[Attached images not shown to you: " + "; ".join(self.skipped) + "]"


def sniff(head: bytes) -> str | None:
    """The image type of a file from its first bytes, or None."""
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def collect_images(rows: Sequence[InRow], session_dir: Path) -> Collected:
    """The images attached to the chat rows of a batch, in order (see the module doc)."""
    out = Collected()
    for row in rows:
        if row.kind not in CHAT_KINDS:
            continue
        attachments = row.data.get("attachments")
        if not isinstance(attachments, list):
            continue
        for att in attachments:
            if isinstance(att, dict) and isinstance(att.get("localPath"), str):
                _one(att, session_dir, out)
    return out


def _one(att: dict[str, Any], session_dir: Path, out: Collected) -> None:
    rel = str(att["localPath"])
    name = str(att.get("name") or os.path.basename(rel))[:100]
    declared = _declared_image(att)
    if not rel.startswith("inbox/") or ".." in rel.split("/"):
        return
    try:
        fd = safefs.open_beneath(session_dir, rel, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, safefs.UnsafePathError) as exc:
        if declared:
            out.skipped.append(f"{name}: cannot be read ({type(exc).__name__})")
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        head = os.pread(fd, 16, 0)
        media_type = sniff(head)
        if media_type is None:
            if declared:
                out.skipped.append(f"{name}: not a JPEG, PNG, GIF or WebP image")
            return
        if st.st_size > MAX_IMAGE_BYTES:
            out.skipped.append(f"{name}: {st.st_size // 1024} KB, over the "
                               f"{MAX_IMAGE_BYTES // 1000} KB limit")  # fmt: skip
            return
        if len(out.images) >= MAX_IMAGES:
            out.skipped.append(f"{name}: more than {MAX_IMAGES} images in one turn")
            return
        data = _read_all(fd)
    finally:
        os.close(fd)
    if len(data) > MAX_IMAGE_BYTES or sniff(data[:16]) != media_type:
        out.skipped.append(f"{name}: changed while being read")
        return
    import base64  # not at the runner's start: most turns carry no image

    out.images.append(Image(name, media_type, base64.b64encode(data).decode("ascii"), len(data)))


def _declared_image(att: dict[str, Any]) -> bool:
    mime = att.get("mimeType")
    return att.get("type") in ("image", "photo") or (
        isinstance(mime, str) and mime.startswith("image/")
    )


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_IMAGE_BYTES:
        chunk = os.pread(fd, min(1 << 20, MAX_IMAGE_BYTES + 1 - total), total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def describe(images: Sequence[Image], why: str = "this model takes no images") -> str:
    """For a model that gets no images: what was attached and not shown."""
    if not images:
        return ""
    listed = "; ".join(f"{i.name} ({i.media_type}, {max(1, i.size // 1024)} KB)" for i in images)
    return (f"[Images attached, not shown: {why}. {listed}. The files are at the paths given "
            "in the message.]")  # fmt: skip
