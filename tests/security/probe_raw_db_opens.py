"""Run in a process of its own (tests/security/test_raw_db_opens.py): a live host with a
real runner answers messages, sweeps and stops, while an audit hook (and a wrapper of
``safefs``'s ``openat2``) records every open of a ``*.db`` file that is not SQLite's own.
Prints one JSON object: what the host opened, and what two deliberate raw opens at the end
were seen as (the hook's own check)."""

import asyncio
import json
import os
import sys
from pathlib import Path

seen: list[str] = []
recording = [False]


def _db_path(value: object) -> str | None:
    if isinstance(value, int):
        return None
    try:
        text = os.fsdecode(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return text if text.endswith(".db") else None


def hook(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if not recording[0]:
        return
    if event == "open":  # builtins.open, os.open (SQLite's own opens raise no event)
        path = _db_path(args[0])
        if path is not None:
            seen.append(f"open {path}")


def watch_openat2() -> None:
    """``safefs`` opens through ``openat2``, a syscall made with ctypes: ctypes calls raise
    no audit event, so that one function is wrapped (the project's only opener there)."""
    from carapace import safefs

    real = safefs._openat2

    def openat2(dirfd: int, path: str, flags: int, mode: int) -> int | None:
        if recording[0] and path.endswith(".db"):
            seen.append(f"openat2 {path}")
        return real(dirfd, path, flags, mode)

    safefs._openat2 = openat2


async def main(home_dir: Path) -> dict[str, object]:
    from carapace.bench.host_benches import SinkChannel, event, make_host
    from carapace.config import Home

    channel = SinkChannel()
    host = make_host(Home.resolve(home_dir), channel)
    recording[0] = True  # from here on: the host at work (open_home's own look is before)
    await host.start()
    replies = []
    try:
        for i in range(3):
            channel.waiting = asyncio.get_running_loop().create_future()
            await host.route(event(f"hello {i}"))
            await asyncio.wait_for(channel.waiting, 60)
            replies.append(channel.last_text)
        await host.sweep_once()
    finally:
        await host.stop()
        host.close()
    host_seen = list(seen)
    outbound = next(home_dir.rglob("outbound.db"))
    from carapace import safefs

    os.close(os.open(outbound, os.O_RDONLY))  # the hook must see these two
    os.close(safefs.open_beneath(outbound.parent, outbound.name))
    recording[0] = False
    return {"replies": replies, "host": host_seen, "probe": seen[len(host_seen) :]}


if __name__ == "__main__":
    sys.addaudithook(hook)
    watch_openat2()
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
