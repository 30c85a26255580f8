"""The web server: login, web chat (channel ``web``), dashboard, webhooks (channel
``webhook``). Needs the ``web`` extra (starlette, uvicorn); see docs/architecture.md."""
