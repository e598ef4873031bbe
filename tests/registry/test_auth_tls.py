"""Authentication (htpasswd basic auth, token auth) and TLS against a real docker-registry."""
from __future__ import annotations

import base64
import json
import os

import pytest

from registry_harness import PASSWORD, USER
from minictr.errors import RegistryError
from minictr.image import auth, registry
from minictr.image.hosts import HostsConfig

pytestmark = pytest.mark.registry


def _pull(store, ref, hosts, authfile, **kw):
    return registry.pull(store, ref, hosts_config=hosts, authfile=authfile, env={}, **kw)


# ---------------------------------------------------------------- htpasswd (Basic)


def test_basic_auth_without_login_is_unauthorized(htpasswd_registry, store, no_hosts, authfile):
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{htpasswd_registry.host}/test/app:v1", no_hosts, authfile)
    assert str(err.value).startswith("unauthorized")
    assert err.value.hint == f"log in first: minictr login {htpasswd_registry.host}"


def test_basic_auth_login_then_pull(htpasswd_registry, store, no_hosts, authfile):
    registry.check_login(htpasswd_registry.host, USER, PASSWORD, hosts_config=no_hosts)
    auth.save(htpasswd_registry.host, USER, PASSWORD, authfile=authfile)

    assert _pull(store, f"{htpasswd_registry.host}/test/app:v1", no_hosts, authfile)
    with open(authfile) as f:
        entry = json.load(f)["auths"][htpasswd_registry.host]
    assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{PASSWORD}"
    assert os.stat(authfile).st_mode & 0o077 == 0


def test_basic_auth_wrong_password(htpasswd_registry, store, no_hosts, authfile):
    with pytest.raises(RegistryError, match="wrong username or password"):
        registry.check_login(htpasswd_registry.host, USER, "nope", hosts_config=no_hosts)
    auth.save(htpasswd_registry.host, USER, "nope", authfile=authfile)
    with pytest.raises(RegistryError, match="unauthorized.*with the stored credentials"):
        _pull(store, f"{htpasswd_registry.host}/test/app:v1", no_hosts, authfile)


def test_docker_config_credentials_are_used(htpasswd_registry, store, no_hosts, tmp_path):
    """~/.docker/config.json is read when no podman-style auth file has an entry."""
    docker = tmp_path / "home" / ".docker"
    docker.mkdir(parents=True)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps(
        {"auths": {f"http://{htpasswd_registry.host}": {"auth": token}}}))
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    assert registry.pull(store, f"{htpasswd_registry.host}/test/app:v1", hosts_config=no_hosts,
                         env=env)


# ---------------------------------------------------------------- TLS


def test_tls_untrusted_ca_is_refused(tls_registry, store, no_hosts, authfile):
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{tls_registry.host}/test/app:v1", no_hosts, authfile)
    assert "not trusted" in str(err.value)
    assert f"certs.d/{tls_registry.host}/ca.crt" in err.value.hint


def test_tls_ca_from_certs_dir(tls_registry, store, authfile, tmp_path):
    certs = tmp_path / "certs.d"
    (certs / tls_registry.host).mkdir(parents=True)
    (certs / tls_registry.host / "ca.crt").write_bytes(open(tls_registry.ca, "rb").read())
    hosts = HostsConfig(certs_dirs=(str(certs),))

    assert _pull(store, f"{tls_registry.host}/test/app:v1", hosts, authfile, tls_verify=True)


def test_tls_verify_false_skips_verification(tls_registry, store, no_hosts, authfile):
    assert _pull(store, f"{tls_registry.host}/test/app:v1", no_hosts, authfile, tls_verify=False)


def test_tls_verify_true_refuses_plain_http(plain, store, no_hosts, authfile):
    with pytest.raises(RegistryError, match="cannot reach registry"):
        _pull(store, f"{plain.host}/test/app:v1", no_hosts, authfile, tls_verify=True)


# ---------------------------------------------------------------- token auth (Bearer)


def test_token_anonymous_pull_of_public_repo(token_registry, store, no_hosts, authfile):
    assert _pull(store, f"{token_registry.host}/public/app:v1", no_hosts, authfile)
    anonymous = [r for r in token_registry.tokens.requests if r["user"] is None]
    assert anonymous and anonymous[-1]["scope"] == ["repository:public/app:pull"]


def test_token_private_repo_needs_login(token_registry, store, no_hosts, authfile):
    with pytest.raises(RegistryError) as err:
        _pull(store, f"{token_registry.host}/private/app:v1", no_hosts, authfile)
    assert str(err.value).startswith("unauthorized")
    assert "minictr login" in err.value.hint


def test_token_login_then_private_pull(token_registry, store, no_hosts, authfile):
    registry.check_login(token_registry.host, USER, PASSWORD, hosts_config=no_hosts)
    auth.save(token_registry.host, USER, PASSWORD, authfile=authfile)
    assert _pull(store, f"{token_registry.host}/private/app:v1", no_hosts, authfile)
    assert token_registry.tokens.requests[-1]["user"] == USER


def test_token_wrong_password(token_registry, store, no_hosts, authfile):
    with pytest.raises(RegistryError, match="wrong username or password"):
        registry.check_login(token_registry.host, USER, "bad", hosts_config=no_hosts)
    auth.save(token_registry.host, USER, "bad", authfile=authfile)
    with pytest.raises(RegistryError, match="wrong username or password") as err:
        _pull(store, f"{token_registry.host}/private/app:v1", no_hosts, authfile)
    assert "minictr login" in err.value.hint
