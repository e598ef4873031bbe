"""An HTTP client for the OCI distribution API (opencontainers/distribution-spec, spec.md).

One ``Client`` talks to one endpoint about one repository over a pooled ``httpclient.Session``:
``ping`` (``GET /v2/``) picks the scheme and learns how to authenticate, ``get_manifest``
(``GET /v2/NAME/manifests/REF``) and ``open_blob`` (``GET /v2/NAME/blobs/DIGEST``, optionally
with ``Range``) fetch content. Authentication follows distribution's token spec
(docs/spec/auth/token.md): a ``Bearer`` challenge sends the client to a token server (with basic
credentials if it has any, anonymously otherwise); a ``Basic`` challenge takes the credentials
directly. Transient failures (connection errors, 429, 5xx) are retried with exponential backoff,
honouring ``Retry-After`` (RFC 9110 §10.2.3).
"""
from __future__ import annotations

import base64
import email.utils
import threading
import time
from _collections_abc import Callable

from minictr.errors import RegistryError
from minictr.image import auth, httpclient
from minictr.image.hosts import Endpoint

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 10          # registries redirect blobs to storage once; a loop ends here
MAX_RETRY_AFTER = 30.0
LOGIN_HINT = "log in first: minictr login {registry}"
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def make_session(endpoint: Endpoint, pool: int = 8, env=None) -> httpclient.Session:
    """A session with a connection pool big enough for the parallel blob workers. Verifying,
    it trusts the system's CAs (a site CA installed in /etc/ssl/certs; $SSL_CERT_FILE), the
    registry's certs.d CAs and a bundle named by $REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE (read
    by minictr before it left requests). Proxies come from the environment (httpclient.py)."""
    import os

    env = os.environ if env is None else env
    cas = endpoint.ca_files + tuple(env[v] for v in CA_BUNDLE_VARIABLES if env.get(v))
    return httpclient.Session(verify=endpoint.verify, ca_files=cas,
                              client_cert=endpoint.client_cert, pool=pool, env=env,
                              max_redirects=MAX_REDIRECTS)


def retry_after(response, default: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return default
    try:
        delay = float(value)
    except ValueError:
        try:
            delay = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return default          # neither form: the registry's header is garbage
    if delay != delay:              # float("nan")
        return default
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def error_text(response) -> str:
    """The registry's own error message (spec.md "Error Codes": {"errors":[{code,message}]})."""
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                         for e in errors) or f"HTTP {response.status_code}"
    except (ValueError, AttributeError, TypeError, RecursionError):
        return f"HTTP {response.status_code} {response.reason or ''}".strip()


class Client:
    """Requests to one registry endpoint for one repository (thread-safe)."""

    def __init__(self, endpoint: Endpoint, repository: str, *,
                 credentials: auth.Credentials | None = None, session=None,
                 sleep: Callable[[float], None] = time.sleep, retries: int = 5,
                 timeout: tuple[float, float] = (10.0, 60.0)):
        self.endpoint = endpoint
        self.repository = repository
        self.credentials = credentials
        self.session = session or make_session(endpoint)
        self.sleep = sleep
        self.retries = retries
        self.timeout = timeout
        self.base: str | None = None
        self.refused = False        # GET /v2/ answered 401 (with or without a challenge)
        self._challenge: auth.Challenge | None = None
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def challenge(self) -> auth.Challenge | None:
        """How ``GET /v2/`` asked us to authenticate (None: an open registry)."""
        return self._challenge

    @property
    def name(self) -> str:
        return self.endpoint.registry or self.endpoint.host

    # ------------------------------------------------------------ connect and authenticate

    def ping(self) -> None:
        """``GET /v2/``: find a scheme that answers and remember the auth challenge."""
        errors = []
        for scheme in self.endpoint.schemes:
            url = f"{scheme}://{self.endpoint.host}/v2/"
            try:
                r = self._ping_once(url)
            except httpclient.TLSError as err:
                if err.verify_failed:
                    raise RegistryError(
                        f"TLS certificate of {self.endpoint.host} is not trusted: {err}",
                        hint=f"put its CA in /etc/containers/certs.d/{self.endpoint.host}/ca.crt,"
                        " or use --tls-verify=false for a test registry") from err
                errors.append(f"{scheme}: {connection_reason(err)}")
                continue
            except httpclient.HTTPError as err:
                errors.append(f"{scheme}: {connection_reason(err)}")
                continue
            if r.status_code not in (200, 401):
                r.close()
                errors.append(f"{scheme}: {error_text(r)} from {url}")
                continue
            self.base = f"{scheme}://{self.endpoint.host}"
            challenges = auth.parse_challenges(r.headers.get("WWW-Authenticate"))
            r.close()
            known = [c for c in challenges if c.scheme in ("bearer", "basic")]
            self._challenge = (known or challenges)[0] if r.status_code == 401 and challenges \
                else None
            self.refused = r.status_code == 401
            return
        hint = ("is the registry running, and is there a network? For a registry that speaks "
                "plain http or has a self-signed certificate, use --tls-verify=false")
        raise RegistryError(f"cannot reach registry {self.endpoint.host}: {' | '.join(errors)}",
                            hint=hint)

    def _ping_once(self, url: str):
        """``GET /v2/``, retrying 429 and 5xx answers (a registry restarting behind a proxy)."""
        for attempt in range(self.retries + 1):
            r = self._send("GET", url, {})
            if r.status_code not in RETRY_STATUS or attempt == self.retries:
                return r
            r.close()
            self.sleep(retry_after(r, min(0.5 * 2 ** attempt, 8.0)))
        raise AssertionError("unreachable")

    def _scope(self, actions: str = "pull") -> str:
        return f"repository:{self.repository}:{actions}"

    def fetch_token(self, challenge: auth.Challenge, scope: str | None,
                    credentials: auth.Credentials | None) -> str:
        """Ask the token server named by a Bearer challenge for a token (token.md,
        "Requesting a Token"); anonymous when there are no credentials."""
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.name} sent a Bearer challenge without a realm")
        params = {k: v for k, v in (("service", challenge.params.get("service")),
                                    ("scope", scope)) if v}
        basic = None
        if credentials:
            params["account"] = credentials.username
            basic = (credentials.username, credentials.password)
        try:
            r = self.session.get(realm, params=params, auth=basic, timeout=self.timeout)
        except httpclient.HTTPError as err:
            raise RegistryError(f"cannot reach the token server {realm}: {err}") from err
        with r:
            return self._token_from(r, realm, credentials)

    def _token_from(self, r, realm: str, credentials: auth.Credentials | None) -> str:
        if r.status_code in (401, 403):
            if credentials:
                raise RegistryError(f"unauthorized: wrong username or password for {self.name}",
                                    hint=LOGIN_HINT.format(registry=self.name))
            raise RegistryError(f"unauthorized: {self.name} refuses anonymous access "
                                f"({error_text(r)})", hint=LOGIN_HINT.format(registry=self.name))
        if r.status_code != 200:
            raise RegistryError(f"token server {realm} answered {error_text(r)}")
        try:
            body = r.json()
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError, RecursionError, OSError) as err:
            raise RegistryError(f"token server {realm} sent no token") from err
        if not (isinstance(token, str) and token and token.isascii() and token.isprintable()):
            raise RegistryError(f"token server {realm} sent a token that is not printable "
                                "ASCII: refused")
        return token

    def auth_headers(self, scope: str | None = None) -> dict[str, str]:
        """The Authorization header for ``scope`` (None: no repository, as for a login)."""
        return self._auth_header(scope)

    def _auth_header(self, scope: str | None, refresh: bool = False) -> dict[str, str]:
        ch = self._challenge
        if ch is None:
            return {}
        if ch.scheme == "basic":
            if not self.credentials:
                return {}
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if ch.scheme != "bearer":
            raise RegistryError(f"registry {self.name} asks for unsupported auth {ch.scheme!r}")
        key = scope or ""
        with self._lock:
            if refresh or key not in self._tokens:
                self._tokens[key] = self.fetch_token(ch, scope, self.credentials)
            return {"Authorization": f"Bearer {self._tokens[key]}"}

    # ------------------------------------------------------------ requests with retries

    def _send(self, method: str, url: str, headers: dict, stream: bool = False):
        return self.session.request(method, url, headers=headers, timeout=self.timeout,
                                    allow_redirects=True)

    def request(self, method: str, path: str, headers: dict | None = None,
                stream: bool = False):
        """Send an API request with auth, retrying transient failures; return the response
        (any status but 401 and the retried ones)."""
        if self.base is None:
            self.ping()
        url = f"{self.base}/v2/{self.repository}/{path}"
        scope = self._scope()
        refreshed = False
        for attempt in range(self.retries + 1):
            delay = min(0.5 * 2 ** attempt, 8.0)
            try:
                r = self._send(method, url, {**(headers or {}), **self._auth_header(scope)},
                               stream)
            except httpclient.ConnectError as err:
                if attempt == self.retries:
                    raise RegistryError(f"{method} {url} failed: {connection_reason(err)}",
                                        hint="the registry stopped answering; try again") from err
                self.sleep(delay)
                continue
            except httpclient.TooManyRedirects as err:
                raise RegistryError(f"{method} {url}: more than {MAX_REDIRECTS} redirects "
                                    "(a redirect loop?)", hint="the registry or a proxy in "
                                    "front of it is misconfigured") from err
            except httpclient.HTTPError as err:        # a redirect to a bad URL...
                raise RegistryError(f"{method} {url} failed: {err}") from err
            if r.status_code == 401 and self._challenge is not None and not refreshed:
                # an expired token, or a scope the registry names in its new challenge
                challenges = auth.parse_challenges(r.headers.get("WWW-Authenticate"))
                if challenges:
                    self._challenge = challenges[0]
                    scope = challenges[0].params.get("scope", scope)
                r.close()
                refreshed = True
                self._auth_header(scope, refresh=True)
                continue
            if r.status_code in RETRY_STATUS and attempt < self.retries:
                wait = retry_after(r, delay)
                r.close()
                self.sleep(wait)
                continue
            if r.status_code == 401:
                r.close()
                raise RegistryError(
                    f"unauthorized: access to {self.name}/{self.repository} denied"
                    + (" with the stored credentials" if self.credentials else ""),
                    hint=LOGIN_HINT.format(registry=self.name))
            return r
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ content

    def get_manifest(self, reference: str, accept: str, max_bytes: int) -> tuple[bytes, str]:
        """The manifest's bytes and Content-Type (``None`` when the registry knows no such
        reference: the caller words that error)."""
        r = self.request("GET", f"manifests/{reference}", {"Accept": accept}, stream=True)
        with r:
            if r.status_code == 404:
                return None, ""
            if r.status_code == 429:
                raise RegistryError(f"{self.name} keeps refusing: {error_text(r)}",
                                    hint="the registry rate-limits pulls (Docker Hub limits "
                                    "anonymous ones): log in, wait, or configure a mirror in "
                                    "registries.json")
            if r.status_code != 200:
                raise RegistryError(f"manifest {self.repository}:{reference} from {self.name}: "
                                    f"{error_text(r)}")
            try:
                data = r.read(max_bytes + 1)
            except (httpclient.HTTPError, OSError) as err:
                # IncompleteRead: a Content-Length the body does not fill; or a cut connection
                raise RegistryError(f"manifest {reference} from {self.name}: the connection "
                                    f"broke while reading it: {err}",
                                    hint="the registry sent less than it announced; try "
                                    "again") from err
            if len(data) > max_bytes:
                raise RegistryError(f"manifest {reference} from {self.name} is larger than "
                                    f"{max_bytes} bytes: refused")
            return data, r.headers.get("Content-Type", "").split(";")[0].strip()

    def open_blob(self, digest: str, offset: int = 0):
        """A streaming response for a blob from ``offset`` (status 200: whole blob; 206: the
        requested range, RFC 9110 §14.2). The caller closes it."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        r = self.request("GET", f"blobs/{digest}", headers, stream=True)
        if r.status_code not in (200, 206):
            r.close()
            if r.status_code == 404:
                raise RegistryError(f"blob {digest} unknown to {self.name}/{self.repository}")
            raise RegistryError(f"blob {digest} from {self.name}: {error_text(r)}")
        return r


def connection_reason(err: Exception) -> str:
    """A connection error in a few words."""
    text = str(err)
    for needle, reason in (("Name or service not known", "host name not found"),
                           ("Temporary failure in name resolution", "host name not found"),
                           ("NameResolutionError", "host name not found"),
                           ("Connection refused", "connection refused"),
                           ("timed out", "timed out"),
                           ("Network is unreachable", "network unreachable"),
                           ("WRONG_VERSION_NUMBER", "it does not speak TLS")):
        if needle in text:
            return reason
    return text.rsplit("Caused by ", 1)[-1].strip("()") or type(err).__name__
