"""The web server: login, web chat (channel ``web``), dashboard, webhooks (channel
``webhook``). Built on starlette and uvicorn (core dependencies); see docs/architecture.md."""
