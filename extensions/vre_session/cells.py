"""Optional audit of executed code: every cell a researcher runs, as the server forwards it.

Enabled per project by an admin (off by default); when on, the sandbox starts the server with
``--ServerApp.kernel_websocket_connection_class=vre_session.cells.AuditedKernelConnection`` and the
researcher is told on the home page, the spawn form and in the Lab's title. Capturing in the
server (not the kernel) means code run from any notebook or console is seen before the kernel runs it.
"""

from __future__ import annotations

import json

from jupyter_server.services.kernels.connection.base import deserialize_binary_message, deserialize_msg_from_ws_v1
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

from .relay import get_relay

MAX_CODE = 100_000  # characters kept per cell


def _plausible_v1(message) -> bool:
    """jupyter_server trusts the offset count in the first 8 bytes; a bogus one would make it
    loop for ages. The count must fit the message (8 bytes per offset)."""
    if not isinstance(message, bytes) or len(message) < 16:
        return False
    count = int.from_bytes(message[:8], "little")
    return 2 <= count <= len(message) // 8


def execute_request_code(message, subprotocol: str | None) -> str | None:
    """The code of an execute_request on the shell channel, else None (both wire protocols)."""
    try:
        if subprotocol == "v1.kernel.websocket.jupyter.org":
            if not _plausible_v1(message):
                return None
            channel, parts = deserialize_msg_from_ws_v1(message)
            if channel != "shell" or len(parts) < 4:
                return None
            header, content = json.loads(parts[0]), json.loads(parts[3])
        else:
            msg = deserialize_binary_message(message) if isinstance(message, bytes) else json.loads(message)
            if msg.get("channel", "shell") != "shell":
                return None
            header, content = msg.get("header") or {}, msg.get("content") or {}
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    if header.get("msg_type") != "execute_request" or not isinstance(content.get("code"), str):
        return None
    return content["code"]


class AuditedKernelConnection(ZMQChannelsWebsocketConnection):
    def handle_incoming_message(self, incoming_msg) -> None:
        code = execute_request_code(incoming_msg, self.subprotocol)
        if code is not None and code.strip():
            get_relay(self.log).record("cell.execute", target=self.kernel_id, details={
                "code": code[:MAX_CODE], "truncated": len(code) > MAX_CODE})
        super().handle_incoming_message(incoming_msg)
