"""Kernel websocket messages as the access layer sees them between browser and server.

Two wire forms (jupyter_server 2): the ``v1.kernel.websocket.jupyter.org`` subprotocol, binary
frames of a little-endian u64 count *n*, *n* u64 offsets, then channel, header, parent_header,
metadata, content and buffers; and the legacy form, a JSON text frame (or, with buffers, a binary
frame of big-endian u32 offsets whose first part is that JSON). The layer only needs to read
execute requests (cell audit) and to write one stream message (a withheld output's notice).
Malformed frames parse as None: they are forwarded as they are and the server refuses them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

V1 = "v1.kernel.websocket.jupyter.org"
MAX_CODE = 100_000  # characters of code kept per record


@dataclass(frozen=True)
class Message:
    channel: str
    header: dict
    parent_header: dict
    content: dict


def _v1_parts(frame: bytes) -> list[bytes] | None:
    if len(frame) < 16:
        return None
    count = int.from_bytes(frame[:8], "little")
    if not 2 <= count <= len(frame) // 8:  # a bogus count must not make us loop
        return None
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
    if offsets != sorted(offsets) or offsets[-1] > len(frame) or offsets[0] < 8 * (count + 1):
        return None
    return [frame[offsets[i]:offsets[i + 1]] for i in range(count - 1)]


def parse(frame: bytes | str, subprotocol: str | None, *, content: bool = True) -> Message | None:
    """The message in a frame, or None when it is not one. ``content=False`` skips decoding the
    content (outputs can be large; only the header is needed to route them)."""
    try:
        if subprotocol == V1:
            if not isinstance(frame, bytes):
                return None
            parts = _v1_parts(frame)
            if parts is None or len(parts) < 5:
                return None
            return Message(parts[0].decode(), json.loads(parts[1]), json.loads(parts[2]) if content else {},
                           json.loads(parts[4]) if content else {})
        if isinstance(frame, bytes):
            count = int.from_bytes(frame[:4], "big")
            if not 1 <= count <= len(frame) // 4:
                return None
            end = int.from_bytes(frame[8:12], "big") if count > 1 else len(frame)
            frame = frame[int.from_bytes(frame[4:8], "big"):end].decode()
        msg = json.loads(frame)
        if not isinstance(msg, dict):
            return None
        return Message(msg.get("channel") or "shell", msg.get("header") or {}, msg.get("parent_header") or {},
                       msg.get("content") or {})
    except (ValueError, UnicodeDecodeError, TypeError, IndexError):
        return None


def executed_code(msg: Message | None) -> tuple[str, str] | None:
    """(kind, code) of a request that runs code: a shell ``execute_request``, or the debugger's
    ``evaluate`` (the Lab's debugger console runs code in the kernel)."""
    if msg is None or not isinstance(msg.header, dict) or not isinstance(msg.content, dict):
        return None
    kind = msg.header.get("msg_type")
    if msg.channel == "shell" and kind == "execute_request" and isinstance(msg.content.get("code"), str):
        return "execute", msg.content["code"]
    if msg.channel == "control" and kind == "debug_request" and msg.content.get("command") == "evaluate":
        expression = (msg.content.get("arguments") or {}).get("expression")
        if isinstance(expression, str):
            return "debug_evaluate", expression
    return None


def stream_notice(replaced: Message, text: str, subprotocol: str | None) -> bytes | str:
    """An iopub ``stream`` (stderr) message in place of ``replaced`` (same parent request), so the
    notice shows in the cell whose output it replaces."""
    header = {"msg_id": uuid.uuid4().hex, "msg_type": "stream", "username": "vre-access",
              "session": replaced.header.get("session", ""), "date": "", "version": "5.3"}
    content = {"name": "stderr", "text": text}
    if subprotocol == V1:
        parts = [b"iopub", json.dumps(header).encode(), json.dumps(replaced.parent_header).encode(), b"{}",
                 json.dumps(content).encode()]
        count = len(parts) + 1
        offsets = [8 * (count + 1)]
        for p in parts:
            offsets.append(offsets[-1] + len(p))
        return (count.to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
                + b"".join(parts))
    return json.dumps({"channel": "iopub", "header": header, "parent_header": replaced.parent_header,
                       "metadata": {}, "content": content, "buffers": []})
