"""The VRE's jupyter-server extension, loaded into every session by the sandbox's command line.

It connects the session to the hub's audit trail: kernel and contents operations, optionally the
code of every executed cell, and (for the dataset and DICOM APIs) ``audit_hook``. The package also
ships the Lab extension (``_jupyter_labextension_paths``).
"""

from __future__ import annotations

import os

__all__ = ["AuditRelay", "audit_hook", "get_relay"]


def __getattr__(name: str):
    """The relay's names, imported when first asked for: every batch job's runner imports this
    package (``python -m vre_session.jobs.runner``) and the relay's HTTP client cost each of them
    20-30 ms of its start."""
    if name in __all__:
        from . import relay
        return getattr(relay, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CONTENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


#: Lab front-end plugins whose server side the access layer does not serve: each would call its
#: route at every Lab load, be refused (403) and fill the audit trail with ``access.refused``.
#: jupyter-server-proxy's launcher items list proxied apps (``/proxy/...`` is refused); LSP asks
#: ``lsp/status`` (no language server runs in a session), as do the plugins that need it.
QUIET_PLUGINS = (
    "@jupyterhub/jupyter-server-proxy",
    "@jupyterlab/lsp-extension",
    "@jupyterlab/notebook-extension:language-server",
    "@jupyterlab/fileeditor-extension:language-server",
)


def _install_page_config(settings: dict, *, audit_cells: bool) -> None:
    """Adjust what the Lab page is told (after the Lab's own page config is read)."""
    previous = settings.get("page_config_hook")

    def page_config(handler, config):
        config = previous(handler, config) if previous else config
        disabled = list(config.get("disabledExtensions") or [])
        config["disabledExtensions"] = disabled + [p for p in QUIET_PLUGINS if p not in disabled]
        if audit_cells:  # the researcher must see that their code is recorded
            config["appName"] = "JupyterLab (code audit on)"
        return config

    settings["page_config_hook"] = page_config


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
    from .relay import get_relay

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

    _install_page_config(serverapp.web_app.settings, audit_cells=os.environ.get("VRE_AUDIT_CELLS") == "1")
    serverapp.event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=on_kernel)
    serverapp.event_logger.add_listener(schema_id=CONTENTS, listener=on_contents)
    setup_handlers(serverapp)
    # itkwidgets' viewer (scripts/itk_assets.py installed it into this environment): static files
    # under static/vre-itk/, which the Lab may frame (vre_session.itk_offline)
    from .itk_offline import setup_handlers as setup_itk

    setup_itk(serverapp.web_app)
    serverapp.log.info("VRE session extension loaded (audit relay %s)", "on" if relay.url else "logging only")
