"""The import report: every v1 row → what it became, what was skipped and why, what needs a
person (spec/v1-migration.md §3.12). Rendered for humans or as JSON (``--json``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["imported", "reused", "kept", "archived", "skipped", "dropped", "failed"]


@dataclass(frozen=True)
class Entry:
    """One v1 row (or aggregate, for chat history) and its fate."""

    source: str  # v1 table ('registered_groups', 'scheduled_tasks', …) or artefact
    key: str  # the v1 key (jid, task id, folder, …)
    outcome: Outcome
    target: str | None = None  # what it became ('agent_group ag-…; wiring mga-…')
    detail: str = ""


@dataclass(frozen=True)
class Attention:
    """Something only a person can finish, and how."""

    subject: str
    problem: str
    action: str


@dataclass
class Report:
    source: str
    home: str
    dry_run: bool = False
    entries: list[Entry] = field(default_factory=list)
    attention: list[Attention] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None

    def add(
        self,
        source: str,
        key: str,
        outcome: Outcome,
        target: str | None = None,
        detail: str = "",
    ) -> Entry:
        e = Entry(source, key, outcome, target, detail)
        self.entries.append(e)
        return e

    def need(self, subject: str, problem: str, action: str) -> None:
        a = Attention(subject, problem, action)
        if a not in self.attention:
            self.attention.append(a)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for e in self.entries:
            out.setdefault(e.source, Counter())[e.outcome] += 1
        return {src: dict(sorted(c.items())) for src, c in out.items()}

    def of(self, source: str, key: str | None = None) -> list[Entry]:
        return [e for e in self.entries if e.source == source and (key is None or e.key == key)]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "home": self.home,
            "dry_run": self.dry_run,
            "ok": self.fatal is None,
            "fatal": self.fatal,
            "summary": self.summary(),
            "rows": [asdict(e) for e in self.entries],
            "needs_attention": [asdict(a) for a in self.attention],
            "notes": self.notes,
        }

    def render(self) -> str:
        lines: list[str] = []
        verb = "would import" if self.dry_run else "imported"
        lines.append(f"NanoClaw v1 at {self.source} → carapace home {self.home}")
        if self.dry_run:
            lines.append("DRY RUN: nothing was written.")
        if self.fatal:
            lines.append(f"FAILED: {self.fatal}")
        lines.append("")
        lines.append("Summary:")
        for src, counts in self.summary().items():
            parts = ", ".join(f"{n} {k}" for k, n in counts.items())
            lines.append(f"  {src}: {parts}")
        lines.append("")
        lines.append(f"Rows ({verb} / reused / kept / skipped …):")
        for e in self.entries:
            target = f" → {e.target}" if e.target else ""
            detail = f"  ({e.detail})" if e.detail else ""
            lines.append(f"  [{e.outcome}] {e.source} {e.key}{target}{detail}")
        if self.attention:
            lines.append("")
            lines.append("Needs a person:")
            for a in self.attention:
                lines.append(f"  - {a.subject}: {a.problem}")
                lines.append(f"      → {a.action}")
        if self.notes:
            lines.append("")
            lines.append("Behaviour changes to know about:")
            for n in self.notes:
                lines.append(f"  - {n}")
        return "\n".join(lines)
