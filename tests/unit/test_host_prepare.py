"""The home and workspace a plan needs, prepared again by a hub without CAP_DAC_OVERRIDE (a hub pod
whose operator dropped it from the chart's six capabilities; sessions still start there): the
member's home (0700, theirs) cannot be looked into, and a second start must not fail on it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vre.plan import Mount, SessionPlan

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changes owners: run as root")


def plan_for(tmp_path: Path) -> SessionPlan:
    return SessionPlan(user="ann", project="lung", profile="small", role="session", session_id="ann-lung",
                       uid=200001, gid=300001, cpu=1, mem_mb=1024, gpus=0, network="vre-lung", datasets=(),
                       mounts=(Mount(tmp_path / "homes" / "ann", "/home/jovyan", False, "home"),
                               Mount(tmp_path / "ws", "/home/jovyan/project", False, "workspace")))


SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{hub!r}, {tests!r}]
from test_host_prepare import plan_for
from vre.backends.host import prepare_home_and_workspace
prepare_home_and_workspace(plan_for(Path({tmp!r})))
"""


def test_a_second_start_by_a_hub_without_dac_override(tmp_path):
    from vre.backends.host import prepare_home_and_workspace

    tmp_path.chmod(0o755)
    plan = plan_for(tmp_path)
    script = SCRIPT.format(hub=str(ROOT / "hub"), tests=str(Path(__file__).parent), tmp=str(tmp_path))
    limited = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c", script]
    first = subprocess.run(limited, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr  # the first start makes the home and its mount point
    home = tmp_path / "homes" / "ann"
    assert (home / "project").is_dir() and (home.stat().st_uid, home.stat().st_mode & 0o777) == (200001, 0o700)
    again = subprocess.run(limited, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # before: PermissionError on <home>/project
    prepare_home_and_workspace(plan)  # a hub with every capability (the sandbox's) still checks it all
    assert (home / "project").stat().st_uid == 200001
