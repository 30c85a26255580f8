"""The agent runner: one process per session (NanoClaw's "container side")."""
