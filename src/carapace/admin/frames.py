"""NanoClaw's admin frames (``src/cli/frame.ts``) and the error that carries a frame code.

RequestFrame  = {id, command, args}
ResponseFrame = {id, ok: true, data} | {id, ok: false, error: {code, message}}
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, get_args

from carapace.errors import CarapaceError

ErrorCode = Literal[
    "unknown-command",
    "invalid-args",
    "permission-denied",
    "forbidden",
    "approval-pending",
    "not-found",
    "handler-error",
    "transport-error",
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)


class RequestFrame(TypedDict):
    id: str
    command: str
    args: dict[str, Any]


class AdminError(CarapaceError):
    """An error with a frame code (``forbidden``, ``unknown-command``, …)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def ok(frame_id: str, data: Any) -> dict[str, Any]:
    return {"id": frame_id, "ok": True, "data": data}


def fail(frame_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": frame_id, "ok": False, "error": {"code": code, "message": message}}
