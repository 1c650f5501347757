"""JupyterHub configuration of the VRE: everything comes from vre settings (see vre/hubconfig.py)."""

from vre.hubconfig import configure
from vre.settings import load

settings = load()
configure(c, settings)  # noqa: F821 (c is provided by JupyterHub)
