"""Fixtures for the registry tier: a real docker-registry on 127.0.0.1 (plain http, htpasswd,
TLS with a test CA, token auth), images pushed to it with skopeo, and a store to pull into."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from registry_harness import (FaultProxy, Layout, RegistryServer, TokenServer,
                              make_ca_and_server_cert)

from minictr.image.hosts import HostsConfig

from registry_harness import BIG, PASSWORD, USER, make_store, push  # noqa: F401 (shared)


def _missing_tools() -> str | None:
    for tool in ("docker-registry", "skopeo", "openssl"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install docker-registry skopeo openssl)"
    return None


@pytest.fixture(scope="session", autouse=True)
def _tools():
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def store(tmp_path):
    return make_store(str(tmp_path / "store"))


@pytest.fixture(scope="session")
def layout(tmp_path_factory):
    """An OCI layout: tag "v1" (two layers, one big), a multi-arch index tagged "multi"
    (amd64, arm64/v8 and an attestation entry), written once per session."""
    path = str(tmp_path_factory.mktemp("layout"))
    lay = Layout(path)
    v1 = lay.image([{"etc/hello": b"hello from layer 0\n"},
                    {"data/big.bin": os.urandom(BIG), "etc/hello": b"overwritten\n"}])
    amd = lay.image([{"arch": b"amd64\n"}], arch="amd64")
    arm = lay.image([{"arch": b"arm64\n"}], arch="arm64", variant="v8")
    attestation = {**lay.image([{"provenance.json": b"{}"}], arch="unknown"),
                   "platform": {"os": "unknown", "architecture": "unknown"},
                   "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                   "vnd.docker.reference.digest": amd["digest"]}}
    index = lay.index([amd, arm], extra=[attestation])
    layouts = {}
    for tag, desc in (("v1", v1), ("multi", index)):
        sub = os.path.join(path, tag)
        shutil.copytree(path, sub, ignore=shutil.ignore_patterns("v1", "multi", "index.json"))
        Layout(sub).tag(desc, tag)
        layouts[tag] = sub
    return {"layouts": layouts, "v1": v1, "amd": amd, "arm": arm, "index": index}


@pytest.fixture
def empty_registry(tmp_path):
    """A plain-http registry (empty; `plain` pushes test/app:v1 to it)."""
    (tmp_path / "registry").mkdir()
    server = RegistryServer(str(tmp_path / "registry"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def plain(empty_registry, layout):
    push(layout, empty_registry.host, "test/app")
    return empty_registry


@pytest.fixture
def proxy(plain):
    p = FaultProxy(plain.port)
    yield p
    p.close()


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory, layout):
    if not shutil.which("htpasswd"):
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    work = tmp_path_factory.mktemp("htreg")
    subprocess.run(["htpasswd", "-Bbc", str(work / "htpasswd"), USER, PASSWORD], check=True,
                   capture_output=True)
    server = RegistryServer(str(work), auth={"htpasswd": {"realm": "minictr-test",
                                                          "path": str(work / "htpasswd")}})
    server.start()
    push(layout, server.host, "test/app", creds=f"{USER}:{PASSWORD}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory, layout):
    work = tmp_path_factory.mktemp("tlsreg")
    ca, cert, key = make_ca_and_server_cert(str(work))
    server = RegistryServer(str(work), tls=(cert, key))
    server.start()
    push(layout, server.host, "test/app")
    server.ca = ca
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory, layout):
    work = tmp_path_factory.mktemp("tokreg")
    tokens = TokenServer(str(work), USER, PASSWORD, service="minictr-registry",
                         issuer="minictr-token-issuer")
    server = RegistryServer(str(work), auth={"token": {
        "realm": tokens.realm, "service": "minictr-registry", "issuer": "minictr-token-issuer",
        "rootcertbundle": tokens.cert}})
    server.start()
    for repo in ("public/app", "private/app"):
        push(layout, server.host, repo, creds=f"{USER}:{PASSWORD}")
    server.tokens = tokens
    yield server
    server.stop()
    tokens.close()


@pytest.fixture
def no_hosts():
    """No registries.json and no certs.d: tests never read the machine's configuration."""
    return HostsConfig()


@pytest.fixture
def authfile(tmp_path):
    return str(tmp_path / "auth.json")
