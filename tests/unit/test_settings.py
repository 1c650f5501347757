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
    ("backend = 'kubernetes'\n", "not available"),
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
