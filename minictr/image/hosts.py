"""Where and how to reach a registry: endpoints, mirrors, TLS trust, insecure registries.

**Endpoints.** A reference names a registry ("docker.io", "host:5000"); the endpoint is
``https://HOST/v2/`` (distribution spec, "Endpoints"), except Docker Hub, whose API lives at
registry-1.docker.io. Plain http, or https without verification, is used only when the user says
``--tls-verify=false``, when registries.json marks the registry ``insecure``, or for a loopback
registry (localhost, 127.0.0.0/8, ::1), where https is tried first and http is the fallback — as
docker treats 127.0.0.0/8 and podman treats localhost.

**Trust.** Extra CA certificates come from certs.d directories, as podman/containers-certs.d(5):
``/etc/containers/certs.d/HOST:PORT/*.crt`` (CAs), ``*.cert`` + ``*.key`` (a client certificate),
then ``$XDG_CONFIG_HOME/containers/certs.d`` (default ~/.config/containers/certs.d) and
``/etc/docker/certs.d``. They are added to the system's CAs.

**Mirrors.** ``registries.json`` — ``$MINICTR_REGISTRIES_CONF``, else
``$XDG_CONFIG_HOME/minictr/registries.json``, else ``/etc/minictr/registries.json``::

    {"registries": {
        "docker.io": {"mirrors": ["mirror.internal:5000",
                                  {"location": "10.0.0.9:5000", "insecure": true}]},
        "lab.example:5000": {"insecure": true}}}

Mirrors are tried in order for pulls, then the registry itself (podman's registries.conf mirror).
"""
from __future__ import annotations

import glob
import ipaddress
import json
import os
from minictr.errors import ImageError
from minictr.records import record

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@record
class Endpoint:
    """One host to send distribution API requests to."""
    host: str                                     # "host[:port]" as in the URL
    schemes: tuple[str, ...] = ("https",)         # tried in order
    verify: bool = True                           # verify the server certificate
    ca_files: tuple[str, ...] = ()                # extra CAs (certs.d *.crt)
    client_cert: tuple[str, str] | None = None    # certs.d NAME.cert + NAME.key
    mirror: bool = False
    registry: str = ""                            # the registry the user named (for auth)


@record
class RegistryConf:
    mirrors: tuple[tuple[str, bool], ...] = ()    # (location, insecure)
    insecure: bool = False


@record
class HostsConfig:
    registries: dict = None                       # name -> RegistryConf; None: {}
    certs_dirs: tuple[str, ...] = ()

    @classmethod
    def _normalize(cls, values: dict) -> dict:
        return {**values, "registries": {} if values["registries"] is None
                else values["registries"]}


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def config_path(env=None) -> str | None:
    env = os.environ if env is None else env
    if env.get("MINICTR_REGISTRIES_CONF"):
        return env["MINICTR_REGISTRIES_CONF"]
    home = env.get("HOME") or os.path.expanduser("~")
    user = os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                        "minictr", "registries.json")
    for path in (user, "/etc/minictr/registries.json"):
        if os.path.exists(path):
            return path
    return None


def _parse_registry(name: str, entry, path: str) -> RegistryConf:
    if not isinstance(entry, dict):
        raise ImageError(f"{path}: registries[{name!r}] must be an object")
    mirrors = []
    for m in entry.get("mirrors", []):
        if isinstance(m, str):
            mirrors.append((m, False))
        elif isinstance(m, dict) and isinstance(m.get("location"), str):
            mirrors.append((m["location"], bool(m.get("insecure", False))))
        else:
            raise ImageError(f"{path}: mirror {m!r} of {name!r} must be \"host[:port]\" or "
                             "{\"location\": ..., \"insecure\": bool}")
    return RegistryConf(mirrors=tuple(mirrors), insecure=bool(entry.get("insecure", False)))


def load_config(path: str | None = None, env=None) -> HostsConfig:
    """Read registries.json (if any) and find the certs.d directories."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    certs = (os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                          "containers", "certs.d"),
             "/etc/containers/certs.d", "/etc/docker/certs.d")
    path = path or config_path(env)
    registries: dict[str, RegistryConf] = {}
    if path:
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError) as err:
            raise ImageError(f"cannot read registries config {path}: {err}") from err
        for name, entry in (doc.get("registries") or {}).items():
            registries[name] = _parse_registry(name, entry, path)
    return HostsConfig(registries=registries, certs_dirs=certs)


def _trust(host: str, certs_dirs) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """CA files and a client certificate for ``host`` from the certs.d directories."""
    cas: list[str] = []
    client = None
    for base in certs_dirs:
        d = os.path.join(base, host)
        cas += sorted(glob.glob(os.path.join(d, "*.crt")))
        for cert in sorted(glob.glob(os.path.join(d, "*.cert"))):
            key = cert[:-len(".cert")] + ".key"
            if client is None and os.path.exists(key):
                client = (cert, key)
    return tuple(cas), client


def _endpoint(host: str, registry: str, insecure: bool, tls_verify: bool | None,
              config: HostsConfig, mirror: bool) -> Endpoint:
    cas, client = _trust(host, config.certs_dirs)
    if tls_verify is True:
        schemes, verify = ("https",), True
    elif tls_verify is False or insecure:
        schemes, verify = ("https", "http"), False
    elif is_loopback(host):
        schemes, verify = ("https", "http"), True
    else:
        schemes, verify = ("https",), True
    return Endpoint(host=host, schemes=schemes, verify=verify, ca_files=cas, client_cert=client,
                    mirror=mirror, registry=registry)


def endpoints(registry: str, tls_verify: bool | None = None,
              config: HostsConfig | None = None) -> list[Endpoint]:
    """The endpoints to try for ``registry``: its mirrors first, then the registry itself."""
    config = config or HostsConfig()
    conf = config.registries.get(registry, RegistryConf())
    out = [_endpoint(loc, registry, insecure, None, config, True)
           for loc, insecure in conf.mirrors]
    host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
    out.append(_endpoint(host, registry, conf.insecure, tls_verify, config, False))
    return out
