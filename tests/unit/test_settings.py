"""The site and user config files (minictr/settings.py) and the [nvidia] table read from them."""
import pytest

from minictr import settings
from minictr.errors import UsageError
from minictr.gpu.request import load_settings


def test_defaults_without_files(tmp_path):
    got = settings.load("nvidia", {}, [str(tmp_path / "none.toml")])
    assert got["driver-root"] == "/" and got["accept-cdi-annotations"] is True
    assert got["accept-nvidia-visible-devices-as-volume-mounts"] is False
    assert got["_sources"] == []


def test_user_file_replaces_the_sites_keys(tmp_path):
    site, user = tmp_path / "site.toml", tmp_path / "user.toml"
    site.write_text('[nvidia]\ndriver-root = "/run/nvidia/driver"\n'
                    'accept-nvidia-visible-devices-envvar-when-unprivileged = false\n')
    user.write_text('[nvidia]\ncdi-spec-dirs = ["/srv/cdi"]\n'
                    'accept-nvidia-visible-devices-envvar-when-unprivileged = true\n')
    got = settings.load("nvidia", {}, [str(site), str(user)])
    assert got["driver-root"] == "/run/nvidia/driver"
    assert got["cdi-spec-dirs"] == ["/srv/cdi"]
    assert got["accept-nvidia-visible-devices-envvar-when-unprivileged"] is True
    assert got["_sources"] == [str(site), str(user)]


def test_the_user_file_is_under_xdg_config_home(tmp_path):
    assert settings.files({"XDG_CONFIG_HOME": "/x"}) == [
        "/etc/minictr/config.toml", "/x/minictr/config.toml"]
    assert settings.files({"HOME": "/home/u"})[1] == "/home/u/.config/minictr/config.toml"


@pytest.mark.parametrize("text, match", [
    ("[nvidia]\ndriver-rot = \"/\"\n", "unknown key 'driver-rot' in \\[nvidia\\]"),
    ("[nvidai]\n", "unknown table \\[nvidai\\]"),
    ("[nvidia]\naccept-cdi-annotations = \"yes\"\n", "must be a bool"),
    ("[nvidia]\ncdi-spec-dirs = \"/etc/cdi\"\n", "must be a list of strings"),
    ("[nvidia]\ndriver-root = \"relative\"\n", "not an absolute path"),
    ("[nvidia\n", "not valid TOML"),
])
def test_mistakes_are_errors_naming_file_and_key(tmp_path, text, match):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match) as err:
        settings.load("nvidia", {}, [str(path)])
    assert str(path) in str(err.value)


def test_driver_roots_flag_then_env_then_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[nvidia]\ndriver-root = "/file/drv"\ndev-root = "/file/dev"\n'
                    'proc-root = "/file/proc"\n')
    got = load_settings(("/flag/drv", None, None), {"MINICTR_NVIDIA_DEV_ROOT": "/env/dev"},
                        [str(path)])
    assert (got.roots.driver_root, got.roots.dev_root, got.roots.proc_root) == (
        "/flag/drv", "/env/dev", "/file/proc")
