"""The agent's system prompt: base instructions, the group's memory files, destinations.

``compose_system_prompt(agent_dir, destinations, assistant_name)`` joins, with blank lines:

1. ``# You are <name>`` and a sentence about the name (when a name is configured);
2. the base instructions (``BASE_INSTRUCTIONS``; NanoClaw's ``container/CLAUDE.md``);
3. ``<agent_dir>/CLAUDE.md``, ``<agent_dir>/CLAUDE.local.md`` and
   ``<agent_dir>/../global/CLAUDE.md`` when present, each under a heading naming the file;
4. ``## Sending messages`` with the destinations (spec §7.1 wording, adapted: a plain reply
   goes back to where the message came from, so ``<message to="…">`` is needed only for
   other destinations).

The runner rebuilds it for every batch, so destination changes show up at once (W-8).
The admin CLI shows the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

MAX_FILE_CHARS = 100_000

BASE_INSTRUCTIONS = """\
You are a personal assistant running inside carapace. People and other agents reach you
through chat apps; each incoming message is shown as XML (`<message>`, `<task>`,
`<webhook>`) with who sent it, when, and from which destination (`from="name"`).

- Be concise. Report outcomes, not process.
- Your working folder is the agent group's folder. `CLAUDE.local.md` there is your
  per-group memory: store substantive facts and decisions in files and keep an index of
  them in `CLAUDE.local.md`. Past conversations are under `conversations/`.
- Attachments people send are saved under the session's `inbox/` folder; the message
  shows the path.
- Use the scheduling tools for reminders and recurring work, `ask_user_question` when you
  need a decision, and `send_file` to send a file."""


class NamedDestination(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def display_name(self) -> str | None: ...


def _label(dest: NamedDestination) -> str:
    if dest.display_name and dest.display_name != dest.name:
        return f"`{dest.name}` ({dest.display_name})"
    return f"`{dest.name}`"


def identity_section(assistant_name: str) -> str:
    if not assistant_name:
        return ""
    return (
        f"# You are {assistant_name}\n\n"
        f"Your name is **{assistant_name}**. Use it when asked who you are, when "
        "introducing yourself, and when signing a message that asks for a signature."
    )


def destinations_section(destinations: Sequence[NamedDestination]) -> str:
    dests = sorted(destinations, key=lambda d: d.name)
    head = "## Sending messages\n\n"
    if not dests:
        return head + (
            "There are currently no configured destinations, so besides replying to the "
            "conversation you are in, no messages can be sent until an admin wires one up."
        )
    if len(dests) == 1:
        head += f"Your destination is {_label(dests[0])}."
    else:
        head += "You can send to the following destinations:\n\n"
        head += "\n".join(f"- {_label(d)}" for d in dests)
    return (
        head + "\n\nWhen replying, default to addressing the destination it came `from` (every "
        'inbound `<message>` carries a `from="name"` attribute): your plain reply goes there. '
        "Wrap each delivered message for another destination in a "
        '`<message to="name">...</message>` block; several blocks address several '
        "destinations. Wrap thinking that must not be sent in `<internal>...</internal>`."
        + "\n\nThe `send_message` tool delivers the same way but in the middle of a turn, "
        "which is useful for quick acknowledgements. Each call and each `<message>` block "
        "arrives as a separate message."
    )


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[:MAX_FILE_CHARS].strip()


def memory_sections(agent_dir: Path) -> list[str]:
    files = (
        ("Group instructions (CLAUDE.md)", agent_dir / "CLAUDE.md"),
        ("Group memory (CLAUDE.local.md)", agent_dir / "CLAUDE.local.md"),
        ("Shared memory (global/CLAUDE.md)", agent_dir.parent / "global" / "CLAUDE.md"),
    )
    out: list[str] = []
    for title, path in files:
        text = _read(path)
        if text:
            out.append(f"## {title}\n\n{text}")
    return out


def compose_system_prompt(
    agent_dir: Path,
    destinations: Sequence[NamedDestination],
    assistant_name: str,
) -> str:
    """The whole system prompt for one agent group's runner (see the module docstring)."""
    parts = [
        identity_section(assistant_name),
        BASE_INSTRUCTIONS,
        *memory_sections(Path(agent_dir)),
        destinations_section(destinations),
    ]
    return "\n\n".join(p for p in parts if p)
