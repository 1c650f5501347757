from pathlib import Path

import pytest

from vre.settings import Settings, SettingsError, load


def test_defaults_need_no_file_and_are_secure(tmp_path):
    s = load(environ={})
    assert s.bind_url.startswith("http://127.0.0.1:")  # loopback only
    assert s.backend == "sandbox"
    assert s.vre_db_url == f"sqlite:///{s.state_dir / 'vre.sqlite'}"


def test_file_then_environment(tmp_path):
    cfg = tmp_path / "vre.toml"
    cfg.write_text('state_dir = "/srv/vre"\nlockout_threshold = 7\ndemo = false\n')
    s = load(cfg, environ={"VRE_LOCKOUT_THRESHOLD": "9"})
    assert s.state_dir == Path("/srv/vre") and s.lockout_threshold == 9 and s.demo is False


@pytest.mark.parametrize("text, fragment", [
    ("bogus = 1\n", "unknown setting(s) bogus"),
    ("lockout_threshold = 'many'\n", "cannot read 'many' as int"),
    ("state_dir = \n", "not valid TOML"),
    ("backend = 'podman'\n", "not available"),
    ("run_dir = '/Run/VRE'\n", "must be lowercase"),
    ("uid_base = 0\n", "never a system account"),
])
def test_bad_settings_are_explained(tmp_path, text, fragment):
    cfg = tmp_path / "vre.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=None) as e:
        load(cfg, environ={})
    assert fragment in str(e.value)


def test_missing_config_file_named_by_env_is_an_error():
    with pytest.raises(SettingsError, match="does not exist"):
        load(environ={"VRE_CONFIG": "/nonexistent/vre.toml"})


def test_bad_bool_in_environment():
    with pytest.raises(SettingsError, match="VRE_DEMO"):
        load(environ={"VRE_DEMO": "perhaps"})


def test_settings_are_immutable():
    with pytest.raises(Exception):
        Settings().state_dir = Path("/tmp")  # type: ignore[misc]


# --- the jupyterhub table: JupyterHub's own traits, set where every other setting is -------------
def test_jupyterhub_table_from_file_and_environment(tmp_path):
    from traitlets.config import Config

    from vre.hubconfig import apply_operator_config

    cfg = tmp_path / "vre.toml"
    cfg.write_text('[jupyterhub.Spawner]\nstart_timeout = 300\nhttp_timeout = 90\n'
                   '[jupyterhub.SandboxSpawner]\npids_limit = 4096\n')
    s = load(cfg, environ={"VRE_JUPYTERHUB": '{"Spawner": {"http_timeout": 120}, "JupyterHub": {"log_level": "DEBUG"}}'})
    assert s.jupyterhub == {"Spawner": {"start_timeout": 300, "http_timeout": 120},  # merged per class
                            "SandboxSpawner": {"pids_limit": 4096}, "JupyterHub": {"log_level": "DEBUG"}}
    c = Config()
    c.Spawner.start_timeout = 120  # the VRE's own value: the operator's comes after it
    assert sorted(apply_operator_config(c, s)) == ["JupyterHub.log_level", "SandboxSpawner.pids_limit",
                                                   "Spawner.http_timeout", "Spawner.start_timeout"]
    assert c.Spawner.start_timeout == 300 and c.SandboxSpawner.pids_limit == 4096


@pytest.mark.parametrize("text, message", [
    ('jupyterhub = 3', "cannot read"),
    ('[jupyterhub]\nSpawner = 3', "give a table of traits"),
    ('[jupyterhub.spawner]\nx = 1', "not a configurable class name"),
    ('[jupyterhub.JupyterHub]\nspawner_class = "localprocess"', "decided by the VRE"),
    ('[jupyterhub.Spawner]\ndisable_user_config = false', "decided by the VRE"),
    ('[jupyterhub.SandboxSpawner]\nenv_keep = ["PATH"]', "decided by the VRE"),
    ('[jupyterhub.ConfigurableHTTPProxy]\ncommand = ["x"]', "decided by the VRE"),
    ('[jupyterhub.KubernetesSpawner]\nhub_service = "vre-hub"', "is now the setting k8s_hub_service"),
])
def test_jupyterhub_table_errors_say_what_to_fix(tmp_path, text, message):
    cfg = tmp_path / "vre.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(SettingsError, match=message):
        load(cfg, environ={})


def test_jupyterhub_table_bad_json_in_the_environment():
    with pytest.raises(SettingsError, match="not valid JSON"):
        load(environ={"VRE_CONFIG": "/dev/null", "VRE_JUPYTERHUB": "{Spawner: 1}"})


def test_every_setting_is_documented_and_the_readme_table_is_current():
    import dataclasses
    import re

    from vre.settings import documented_fields, settings_table

    documented = [name for names, _ in documented_fields() for name in names]
    public = [f.name for f in dataclasses.fields(Settings) if not f.name.startswith("_")]
    assert documented == public  # a field without a '#:' comment of its own or of its group fails
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = re.search(r"<!-- settings-table:start[^>]*-->\n(.*?)<!-- settings-table:end -->", readme, re.S)
    assert table, "README.md lost its settings-table markers"
    assert table.group(1) == settings_table(), (
        "README.md's settings table differs from the settings' documentation: regenerate it with "
        "`.venv/bin/python -m vre.settings --markdown` and paste it between the markers")


@pytest.mark.parametrize("environ, message", [
    ({"VRE_K8S_JOB_RUNNER": "slurm"}, "k8s_job_runner 'slurm': use one of dask, jobs"),
    ({"VRE_K8S_KUEUE_QUEUE": "vre-batch"}, "set k8s_job_runner = 'jobs' too"),
    ({"VRE_K8S_JOB_RUNNER": "jobs", "VRE_K8S_KUEUE_QUEUE": "Batch_Queue"}, "is not a LocalQueue name"),
    ({"VRE_K8S_JOB_RUNNER": "jobs", "VRE_K8S_KUEUE_CLUSTER_QUEUE": "gpus"}, "k8s_kueue_queue is empty"),
    ({"VRE_K8S_JOB_RUNNER": "jobs", "VRE_K8S_KUEUE_QUEUE": "q", "VRE_K8S_KUEUE_CLUSTER_QUEUE": "GPUs!"},
     "is not a ClusterQueue name"),
])
def test_job_runner_and_kueue_queue_say_what_to_fix(environ, message):
    with pytest.raises(SettingsError, match=message):
        load(environ={"VRE_CONFIG": "/dev/null", **environ})
    ok = load(environ={"VRE_CONFIG": "/dev/null", "VRE_K8S_JOB_RUNNER": "jobs", "VRE_K8S_KUEUE_QUEUE": "vre-batch"})
    assert (ok.k8s_job_runner, ok.k8s_kueue_queue) == ("jobs", "vre-batch")
