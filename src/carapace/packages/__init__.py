"""Per-group packages (pip, npm) installed for real, in a sandbox (docs/sandbox.md)."""
