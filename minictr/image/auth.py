"""Registry credentials: the auth files that `minictr login`, podman and docker write, and the
``WWW-Authenticate`` challenges a registry answers with.

Auth files share one JSON shape (containers-auth.json(5), docker's config.json)::

    {"auths": {"registry.example:5000": {"auth": base64("user:password")}}}

A key may also name a repository namespace ("registry.example/team"); the longest key that is a
prefix of ``registry/repository`` wins, as in containers-auth.json(5). Docker Hub's key in docker's
config.json is the legacy "https://index.docker.io/v1/". Lookup order (first file with a match
wins), as podman's: ``--authfile``/$REGISTRY_AUTH_FILE, then ${XDG_RUNTIME_DIR}/containers/auth.json
(root without XDG_RUNTIME_DIR: /run/containers/0/auth.json), $XDG_CONFIG_HOME/containers/auth.json,
~/.docker/config.json. Credential helpers (``credHelpers``, ``credsStore``) are not run.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from minictr.errors import ImageError
from minictr.records import record

DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io",
                   "https://index.docker.io/v1/")


@record
class Credentials:
    username: str
    password: str


@record
class Challenge:
    """One ``WWW-Authenticate`` challenge (RFC 7235 §4.1): a scheme and its parameters.

    The registry token flow (distribution's docs/spec/auth/token.md): a 401 carries
    ``Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"``; the
    client asks the realm for a token with those parameters and retries with
    ``Authorization: Bearer TOKEN``.
    """
    scheme: str                 # lower case: "bearer" or "basic"
    params: dict[str, str]


# auth-param = token BWS "=" BWS ( token / quoted-string ), RFC 7235 §2.1
_PARAM = re.compile(r'\s*([A-Za-z0-9_.\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


def parse_challenges(header: str | None) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header into its challenges (schemes in lower case)."""
    out: list[Challenge] = []
    if not header:
        return out
    pos = 0
    while pos < len(header):
        m = re.compile(r"[\s,]*([A-Za-z][A-Za-z0-9_\-]*)").match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(header, pos)
            if not pm or pm.end() == pos:
                break
            value = pm.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[pm.group(1).lower()] = value
            pos = pm.end()
        out.append(Challenge(scheme, params))
    return out


# ---------------------------------------------------------------- auth files


def _home(env) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def default_authfile(env=None, euid: int | None = None) -> str:
    """Where `minictr login` writes: podman's ${XDG_RUNTIME_DIR}/containers/auth.json."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get("REGISTRY_AUTH_FILE"):
        return env["REGISTRY_AUTH_FILE"]
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json")
    if euid == 0:
        return "/run/containers/0/auth.json"
    config = env.get("XDG_CONFIG_HOME") or os.path.join(_home(env), ".config")
    return os.path.join(config, "containers", "auth.json")


def search_path(authfile: str | None = None, env=None, euid: int | None = None) -> list[str]:
    """The auth files read for a pull, in order (see the module docstring)."""
    env = os.environ if env is None else env
    if authfile:
        return [authfile]
    config = env.get("XDG_CONFIG_HOME") or os.path.join(_home(env), ".config")
    paths = [default_authfile(env, euid), os.path.join(config, "containers", "auth.json"),
             os.path.join(_home(env), ".docker", "config.json")]
    return list(dict.fromkeys(paths))


def _read_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ImageError(f"cannot read auth file {path}: {err}",
                         hint="fix or remove the file, then `minictr login` again") from err
    if not isinstance(doc, dict):
        raise ImageError(f"auth file {path} is not a JSON object")
    return doc


def _decode_entry(entry: dict, path: str, key: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]))
    raw = entry.get("auth")
    if not raw:
        return None
    try:
        user, sep, password = base64.b64decode(raw, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ImageError(f"auth file {path}: entry {key!r} has an invalid base64 \"auth\"") from err
    if not sep:
        raise ImageError(f"auth file {path}: entry {key!r} has no ':' in its \"auth\"")
    return Credentials(user, password)


def normalise_registry(key: str) -> str:
    """"https://index.docker.io/v1/" → "docker.io"; "http://host:5000/v2/" → "host:5000"."""
    if key in DOCKER_HUB_KEYS:
        return "docker.io"
    key = re.sub(r"^[a-z]+://", "", key)
    return key.rstrip("/").removesuffix("/v1").removesuffix("/v2")


def lookup(registry: str, repository: str = "", authfile: str | None = None, env=None,
           euid: int | None = None) -> Credentials | None:
    """Credentials for ``registry``/``repository`` from the first auth file that has any."""
    target = f"{normalise_registry(registry)}/{repository}".rstrip("/")
    for path in search_path(authfile, env, euid):
        auths = _read_json(path).get("auths") or {}
        best: tuple[int, Credentials] | None = None
        for key, entry in auths.items():
            norm = normalise_registry(key)
            if target == norm or target.startswith(norm + "/"):
                creds = _decode_entry(entry, path, key)
                if creds and (best is None or len(norm) > best[0]):
                    best = (len(norm), creds)
        if best:
            return best[1]
    return None


def _write_json(path: str, doc: dict) -> None:
    """Write an auth file atomically, readable by its owner only (it holds passwords)."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save(registry: str, username: str, password: str, authfile: str | None = None,
         env=None) -> str:
    """Store credentials for ``registry`` (what `minictr login` does); return the file."""
    path = authfile or default_authfile(env)
    doc = _read_json(path)
    auths = doc.setdefault("auths", {})
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[normalise_registry(registry)] = {"auth": token}
    _write_json(path, doc)
    return path


def remove(registry: str, authfile: str | None = None, env=None) -> None:
    """Forget the credentials for ``registry`` (`minictr logout`)."""
    path = authfile or default_authfile(env)
    doc = _read_json(path)
    key = normalise_registry(registry)
    auths = doc.get("auths") or {}
    found = [k for k in auths if normalise_registry(k) == key]
    if not found:
        raise ImageError(f"not logged in to {registry}", hint=f"credentials file: {path}")
    for k in found:
        del auths[k]
    _write_json(path, doc)
