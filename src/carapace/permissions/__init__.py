"""Who may talk to an agent, and who decides: access rules, approvals, cards, questions.

The host calls in; this package never imports the host (it gets what it needs through
``Ctx``, which the host's ``HostContext`` and the admin's contexts implement). The surface:

* decide — ``can_access`` (may this user reach that agent group), ``handle_action`` (the
  single entry point for a click or a reply on a card, from any channel), ``decide`` (an
  operator's decision by id or code);
* request — ``request_approval`` (hold an agent's action for an approver);
* render — ``card_content`` / ``render_text`` (a card as NanoClaw's ``ask_question``
  payload, and as plain text for channels without buttons);
* expire — ``expire_due`` (cards past their time).

Modules: ``access`` (the rules), ``approvals`` (the engine), ``cards`` (card rows, effects
and their delivery), ``card_text`` (quoting agent text inside cards), ``channel_approval`` /
``sender_approval`` / ``questions`` (the three flows), ``system_actions`` (what an agent
may ask for: a new agent, packages, an MCP server), ``approvals_host`` (plugging the
engine into a running host).
"""

from __future__ import annotations

from carapace.permissions import system_actions  # registers the agents' action handlers
from carapace.permissions.access import can_access
from carapace.permissions.approvals import decide, expire_due, handle_action, request_approval
from carapace.permissions.cards import Ctx, card_content, render_text

__all__ = [
    "Ctx",
    "can_access",
    "card_content",
    "decide",
    "expire_due",
    "handle_action",
    "render_text",
    "request_approval",
    "system_actions",
]
