"""Help text of ``carapace admin``: the resource list and each resource's verbs and options."""

from __future__ import annotations

from collections.abc import Iterable

from carapace.admin.registry import Resource, Verb, resources

USAGE = "carapace admin [--home DIR] [--json] RESOURCE VERB [ID] [--option VALUE | --flag]…"
_COL = 34


def _access(verb: Verb) -> str:
    return "host only" if verb.host_only else verb.access


def global_help(allowed: Iterable[str] | None = None) -> str:
    """The list of resources (only ``allowed`` ones when given, e.g. for group scope)."""
    keep = None if allowed is None else set(allowed)
    lines = [
        f"Usage: {USAGE}",
        "",
        "Every operator task on the agent groups, chats, wirings, users and approvals of a",
        "carapace home. Talks to the running host over data/ncl.sock; with no host running,",
        "applies the same change directly to the home's database (and says so on stderr).",
        "",
        "Resources:",
    ]
    for res in resources():
        if keep is not None and res.name not in keep:
            continue
        lines.append(f"  {res.name:<18}{res.help}")
        verbs = ", ".join(v.name for v in res.verbs if v.access != "hidden")
        lines.append(f"  {'':<18}verbs: {verbs}")
    lines += [
        "",
        "Other commands:",
        f"  {'help':<18}This list.",
        "",
        "`carapace admin RESOURCE help` lists a resource's verbs and options. Ids may be",
        "given as --id ID or positionally; agent groups also by folder. --json prints the",
        "response's data as JSON; errors print `error (CODE): MESSAGE` and exit 1",
        "(2 for transport and usage errors).",
    ]
    return "\n".join(lines)


def verb_usage(res: Resource, verb: Verb) -> str:
    head = f"{res.name} {verb.name}"
    opt = verb.option("id")
    if opt is not None and opt.required:
        head += " [ID]"
    return head


def resource_help(res: Resource) -> str:
    lines = [
        f"Usage: carapace admin [--json] {res.name} VERB [ID] [--option VALUE]…",
        "",
        res.help,
        "",
        "Verbs:",
    ]
    for verb in res.verbs:
        if verb.access == "hidden":
            continue
        lines.append(f"  {verb_usage(res, verb)}  [{_access(verb)}]")
        lines.append(f"      {verb.help}")
        for opt in verb.options:
            req = " (required)" if opt.required else ""
            desc = f"{opt.help}{req}".strip()
            flag = opt.describe()
            if len(flag) > _COL - 6:
                lines.append(f"      {flag}")
                flag = ""
            if desc:
                lines.append(f"      {flag:<{_COL - 4}}{desc}")
            elif flag:
                lines.append(f"      {flag}")
        lines.append("")
    notes = []
    if res.group_scope:
        notes.append("usable by agents with cli_scope 'group' (own agent group only)")
    else:
        notes.append("agents need cli_scope 'global'")
    notes.append("[approval] verbs from agents wait for an admin's approval")
    lines += ["Agents: " + "; ".join(notes) + "."]
    return "\n".join(lines)
