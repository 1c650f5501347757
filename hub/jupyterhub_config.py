"""JupyterHub configuration of the VRE: everything comes from vre settings (see vre/hubconfig.py)."""

from vre.hubconfig import configure
from vre.settings import load

settings = load()
configure(c, settings)  # noqa: F821 (c is provided by JupyterHub)
if settings.extra_hub_config:  # tests only: e.g. faster polling
    load_subconfig(settings.extra_hub_config)  # noqa: F821
