"""The VRE's jupyter-server extension, loaded into every session by the sandbox's command line.

It connects the session to the hub's audit trail: kernel and contents operations, optionally the
code of every executed cell, and (for the dataset and DICOM APIs) ``audit_hook``. The package also
ships the Lab extension (``_jupyter_labextension_paths``).
"""

from __future__ import annotations

import os

from .relay import AuditRelay, audit_hook, get_relay

__all__ = ["AuditRelay", "audit_hook", "get_relay"]

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CONTENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


def _jupyter_server_extension_points():
    return [{"module": "vre_session"}]


def _jupyter_labextension_paths():
    """The lab extension (as the JupyterLab extension template): built into ``labextension/`` and
    installed by pip as shared data into ``share/jupyter/labextensions/vre-session``."""
    return [{"src": "labextension", "dest": "vre-session"}]


def _load_jupyter_server_extension(serverapp) -> None:
    # The dataset and DICOM APIs and the download guard. No fallback: a session whose handlers
    # cannot be set up (a broken environment) must not start without its guard, so any failure
    # here fails the server start (the hub runs it with reraise_server_extension_failures).
    from .handlers import setup_handlers

    relay = get_relay(serverapp.log)
    relay.start()

    async def on_kernel(logger, schema_id: str, data: dict) -> None:
        action = {"start": "kernel.start", "shutdown": "kernel.stop", "restart": "kernel.restart"}.get(data.get("action"))
        if action:
            relay.record(action, target=data.get("kernel_id") or "", outcome="ok" if data.get("status") != "error" else "error",
                         details={"kernel_name": data.get("kernel_name"), "msg": data.get("msg")})

    async def on_contents(logger, schema_id: str, data: dict) -> None:
        action = data.get("action")
        name = {"get": "contents.get", "save": "contents.save", "upload": "contents.save", "create": "contents.create",
                "copy": "contents.create", "rename": "contents.rename", "delete": "contents.delete"}.get(action)
        if name:
            details = {"operation": action}
            if data.get("source_path"):
                details["source"] = data["source_path"]
            relay.record(name, target=data.get("path") or "", details=details)

    if os.environ.get("VRE_AUDIT_CELLS") == "1":  # the researcher must see that their code is recorded
        settings = serverapp.web_app.settings
        previous = settings.get("page_config_hook")

        def announce(handler, page_config):
            page_config = previous(handler, page_config) if previous else page_config
            page_config["appName"] = "JupyterLab (code audit on)"
            return page_config

        settings["page_config_hook"] = announce

    serverapp.event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=on_kernel)
    serverapp.event_logger.add_listener(schema_id=CONTENTS, listener=on_contents)
    setup_handlers(serverapp)
    # itkwidgets' viewer (scripts/itk_assets.py installed it into this environment): static files
    # under static/vre-itk/, which the Lab may frame (vre_session.itk_offline)
    from .itk_offline import setup_handlers as setup_itk

    setup_itk(serverapp.web_app)
    serverapp.log.info("VRE session extension loaded (audit relay %s)", "on" if relay.url else "logging only")
