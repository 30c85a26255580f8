"""The host's egress proxy: the only way a sandboxed runner reaches a model API or the web.

* ``keys``: provider keys from the host environment or ``<home>/secrets.env`` (0600).
* ``http11``: the small HTTP/1.1 reader/writer both sides use (no buffering of bodies).
* ``upstream``: keep-alive connections to the provider APIs.
* ``usage`` / ``prices`` / ``budgets``: what every call cost, and when to stop.
* ``server``: one unix socket per session, bound into its sandbox.
"""
