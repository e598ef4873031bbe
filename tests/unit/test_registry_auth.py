"""Auth files (containers-auth.json(5), docker config.json) and WWW-Authenticate parsing."""
from __future__ import annotations

import base64
import json
import os

import pytest

from minictr.errors import ImageError
from minictr.image import auth


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_parse_bearer_challenge():
    [ch] = auth.parse_challenges('Bearer realm="https://auth.docker.io/token",'
                                 'service="registry.docker.io",scope="repository:library/x:pull"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.docker.io/token",
                         "service": "registry.docker.io", "scope": "repository:library/x:pull"}


def test_parse_quoted_commas_escapes_and_several_challenges():
    chs = auth.parse_challenges('Basic realm="a, \\"b\\"", Bearer realm=https://t/token, '
                                'scope="repository:a:pull,push"')
    assert [c.scheme for c in chs] == ["basic", "bearer"]
    assert chs[0].params["realm"] == 'a, "b"'
    assert chs[1].params == {"realm": "https://t/token", "scope": "repository:a:pull,push"}


def test_parse_empty_header():
    assert auth.parse_challenges(None) == []
    assert auth.parse_challenges("") == []


def test_default_authfile_follows_podman():
    assert auth.default_authfile({"XDG_RUNTIME_DIR": "/run/user/1000"}, euid=1000) == \
        "/run/user/1000/containers/auth.json"
    assert auth.default_authfile({}, euid=0) == "/run/containers/0/auth.json"
    assert auth.default_authfile({"HOME": "/h"}, euid=1000) == "/h/.config/containers/auth.json"
    assert auth.default_authfile({"REGISTRY_AUTH_FILE": "/x.json"}, euid=0) == "/x.json"


def test_save_lookup_remove_round_trip(tmp_path):
    path = str(tmp_path / "a" / "auth.json")
    auth.save("reg.example:5000", "bob", "pa:ss", authfile=path)

    assert auth.lookup("reg.example:5000", "team/app", authfile=path) == \
        auth.Credentials("bob", "pa:ss")
    assert os.stat(path).st_mode & 0o777 == 0o600
    auth.remove("reg.example:5000", authfile=path)
    assert auth.lookup("reg.example:5000", authfile=path) is None
    with pytest.raises(ImageError, match="not logged in"):
        auth.remove("reg.example:5000", authfile=path)


def test_longest_namespace_key_wins(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {
        "reg.io": {"auth": _b64("all:1")},
        "reg.io/team": {"auth": _b64("team:2")},
        "reg.io/teamx": {"auth": _b64("other:3")}}}))
    assert auth.lookup("reg.io", "team/app", authfile=str(path)).username == "team"
    assert auth.lookup("reg.io", "teamx/app", authfile=str(path)).username == "other"
    assert auth.lookup("reg.io", "else/app", authfile=str(path)).username == "all"


def test_search_order_and_docker_hub_legacy_key(tmp_path):
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(json.dumps(
        {"auths": {"https://index.docker.io/v1/": {"auth": _b64("dock:er")}}}))
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    assert auth.lookup("docker.io", "library/busybox", env=env, euid=1000) == \
        auth.Credentials("dock", "er")

    auth.save("docker.io", "pod", "man", env=env)   # podman's file is searched first
    assert auth.lookup("docker.io", "library/busybox", env=env, euid=1000).username == "pod"


def test_username_password_fields_and_scheme_keys(tmp_path):
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"http://reg:5000/v2/": {"username": "u",
                                                                  "password": "p"}}}))
    assert auth.lookup("reg:5000", authfile=str(path)) == auth.Credentials("u", "p")


@pytest.mark.parametrize("content,message", [
    ("{not json", "cannot read auth file"),
    ('{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}', "has no ':'"),
    ('{"auths": {"r": {"auth": "@@@"}}}', "invalid base64"),
    ("[]", "not a JSON object"),
])
def test_bad_auth_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "auth.json"
    path.write_text(content)
    with pytest.raises(ImageError, match=message):
        auth.lookup("r", authfile=str(path))
