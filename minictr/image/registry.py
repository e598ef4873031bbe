"""Pulling an image from an OCI/Docker registry into the store.

The sequence (distribution-spec spec.md, "Pull"):

1. resolve the reference: ``GET /v2/NAME/manifests/TAG|DIGEST`` accepting OCI and Docker
   manifests and indexes; the digest of the bytes received is always computed, and must equal
   the reference's digest when pulling by digest;
2. an index (multi-platform image) is narrowed to one platform's manifest, fetched by digest and
   verified the same way;
3. the config blob (small) is fetched and verified; its ``rootfs.diff_ids`` give each layer's
   ChainID, the key the store unpacks layers under;
4. layers missing from the store are downloaded in parallel, each streamed straight into
   ``store.import_layer``, which hashes and unpacks it as it arrives and keeps it only if both
   the blob digest and the uncompressed diff_id match;
5. ``store.add_image`` records the manifest and config under the reference's name.
"""
from __future__ import annotations

import contextlib
import os
import threading
from _collections_abc import Callable

from minictr.errors import ImageError, RegistryError
from minictr.image import auth, hosts, httpclient, manifests
from minictr.image.distribution import Client, connection_reason, error_text
from minictr.image.transfer import BlobStream, Cancelled, Deadline, Transfers, run_parallel

WORKERS = 4
PULL_TIMEOUT = 3600.0       # seconds for a whole pull (or login); MINICTR_PULL_TIMEOUT=0: none


def pull_timeout(env) -> float | None:
    """The total deadline of a pull, from $MINICTR_PULL_TIMEOUT (seconds; 0 means none). A
    per-read timeout cannot bound a pull: a server that sends a byte every few seconds never
    trips it."""
    text = env.get("MINICTR_PULL_TIMEOUT")
    if text is None or text == "":
        return PULL_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ImageError(f"MINICTR_PULL_TIMEOUT={text!r} is not a number of seconds",
                         hint="e.g. MINICTR_PULL_TIMEOUT=7200, or 0 for no limit")
    return seconds or None


def _reference(ref: str):
    from minictr.image import reference

    try:
        return reference.parse(ref)
    except ImageError:
        raise
    except ValueError as err:
        raise ImageError(f"invalid image reference {ref!r}: {err}") from err


@contextlib.contextmanager
def _registry_error():
    """The document checks raise ImageError; coming from a registry, a bad document is the
    registry's fault: a RegistryError, on which pull() tries the next endpoint after a mirror."""
    try:
        yield
    except RegistryError:
        raise
    except ImageError as err:
        raise RegistryError(str(err), hint=err.hint) from err


class _Pull:
    """One pull from one endpoint: the client, the store, progress and the transfer state."""

    def __init__(self, store, ref, client: Client, progress, transfers: Transfers,
                 sleep: Callable[[float], None]):
        self.store, self.ref, self.client = store, ref, client
        self.progress, self.transfers, self.sleep = progress, transfers, sleep
        self.where = f"{client.name}/{ref.repository}"

    # ------------------------------------------------------------ manifests

    def fetch_manifest(self, reference: str, expect_digest: str | None) -> tuple[bytes, str, str]:
        data, ctype = self.client.get_manifest(reference, manifests.ACCEPT, manifests.MAX_MANIFEST)
        if data is None:
            raise RegistryError(f"manifest unknown: {self.ref}",
                                hint=f"no tag or digest {reference!r} in {self.where}; "
                                "check the name and tag (the registry's tags are listed at "
                                f"/v2/{self.ref.repository}/tags/list)")
        digest = manifests.sha256_digest(data)
        if expect_digest and digest != expect_digest:
            raise RegistryError(f"manifest digest mismatch for {self.where}@{expect_digest}: "
                                f"received {digest}", hint="the registry or a proxy altered "
                                "the manifest; nothing was stored")
        return data, ctype, digest

    def resolve(self, want: dict) -> tuple[bytes, dict, str]:
        """The image manifest (bytes, document, digest) for platform ``want``, following an
        index the way the loader follows one (manifests.select_manifest)."""
        name = self.ref.digest or self.ref.tag or "latest"
        data, ctype, digest = self.fetch_manifest(name, self.ref.digest)
        for _depth in range(2):        # an index may (rarely) point at a nested index
            with _registry_error():
                kind, doc = manifests.load(data, ctype, f"{self.where}@{digest}")
                if kind == "manifest":
                    return data, doc, digest
                chosen = manifests.select_manifest(doc["manifests"], want,
                                                   f"{self.where}@{digest}")
            data, ctype, digest = self.fetch_manifest(chosen["digest"], chosen["digest"])
        raise RegistryError(f"{self.where}: indexes nested too deeply")

    # ------------------------------------------------------------ blobs

    def fetch_config(self, desc: dict) -> bytes:
        if self.store.has_blob(desc["digest"]):
            with open(self.store.blob_path(desc["digest"]), "rb") as f:
                return f.read()
        stream = self.blob_stream(desc, on_bytes=None)
        with stream:
            data = b"".join(iter(lambda: stream.read(1 << 16), b""))
        if manifests.sha256_digest(data) != desc["digest"]:
            raise RegistryError(f"config blob digest mismatch for {self.where}: expected "
                                f"{desc['digest']}", hint="nothing was stored")
        return data

    def blob_stream(self, desc: dict, on_bytes) -> BlobStream:
        digest = desc["digest"]
        return BlobStream(lambda offset: self.client.open_blob(digest, offset), desc["size"],
                          digest, self.transfers, on_bytes=on_bytes, sleep=self.sleep)

    def layer_job(self, desc: dict, diff_id: str, chain_id: str, lower_lookup, done):
        """A job that brings one layer into the store (download only what is missing), and
        sets the event ``done`` when it ends."""

        def job() -> str:
            try:
                return unpack()
            finally:
                done.set()

        key = digest = desc["digest"]
        label = digest.split(":")[1][:12]

        def unpack() -> str:
            if self.store.reuse_layer(chain_id):
                self.progress.finish(key, label, "exists")
                return "exists"
            if self.store.has_blob(digest):
                self.store.import_layer_from_blob(digest, media_type=desc["mediaType"],
                                                  diff_id=diff_id, chain_id=chain_id,
                                                  lower_lookup=lower_lookup,
                                                  size=desc["size"])
                self.progress.finish(key, label, "unpacked")
                return "unpacked"
            self.progress.start(key, label, desc["size"])
            stream = self.blob_stream(desc, lambda n: self.progress.update(key, n))
            try:
                with stream:
                    self.store.import_layer(stream, media_type=desc["mediaType"],
                                            digest=digest, diff_id=diff_id,
                                            chain_id=chain_id, lower_lookup=lower_lookup,
                                            size=desc["size"])
            except (Cancelled, RegistryError):
                self.progress.finish(key, label, "failed")
                raise
            except ImageError as err:       # the store's verification: name the source
                self.progress.finish(key, label, "failed")
                raise RegistryError(f"layer {digest} from {self.where}: {err}",
                                    hint=err.hint or "nothing was stored") from err
            if self.transfers.cancel.is_set():
                raise Cancelled()
            self.progress.finish(key, label, "done")
            return "done"

        return job

    def lower_lookup(self, chains: list[str], done: list):
        """The store's lower_lookup for a layer above ``chains``: waits until their jobs have
        ended (they were started first), then names their directories, topmost first."""

        def lookup() -> list[str]:
            for event in done:
                while not event.wait(0.2):
                    if self.transfers.cancel.is_set():
                        raise Cancelled()
            missing = [c for c in chains if not self.store.has_layer(c)]
            if missing:
                raise RegistryError(f"{self.where}: a lower layer ({missing[0]}) failed")
            return [self.store.layer_dir(c) for c in reversed(chains)]

        return lookup

    def run(self, want: dict) -> str:
        manifest_bytes, manifest, digest = self.resolve(want)
        where = f"{self.where}@{digest}"
        self.progress.message(f"{self.ref}: manifest {digest}")
        layers = manifest["layers"]
        for i, d in enumerate(layers):
            if d.get("urls"):
                raise RegistryError(f"{where}: layer {i} is a foreign layer (urls): "
                                    "not supported")
        config_bytes = self.fetch_config(manifest["config"])
        with _registry_error():
            ids = manifests.parse_config(config_bytes, f"{where}: image config")["rootfs"][
                "diff_ids"]
            chains = manifests.chain_ids(ids)
        if len(ids) != len(layers):
            raise RegistryError(f"{where}: the config lists {len(ids)} diff_ids for "
                                f"{len(layers)} layers")
        done = [threading.Event() for _ in layers]
        # bottom first: run_parallel starts them in order, so a layer waiting for the ones
        # below (copy-up, image/copyup.py) never holds a worker they need
        jobs = [self.layer_job(d, diff_id, chain, self.lower_lookup(chains[:i], done[:i]),
                               done[i])
                for i, (d, diff_id, chain) in enumerate(zip(layers, ids, chains))]
        run_parallel(jobs, self.transfers, workers=WORKERS)
        name = str(self.ref)
        self.store.add_image([name], manifest_bytes, config_bytes)
        return name


class _Quiet:
    def message(self, text): pass
    def start(self, key, label, total): pass
    def update(self, key, n): pass
    def finish(self, key, label, status): pass
    def close(self): pass


def _credentials(ref, endpoint: hosts.Endpoint, authfile, env) -> auth.Credentials | None:
    # a mirror has its own credentials, if any; the registry's must not be sent to it
    name = endpoint.host if endpoint.mirror else ref.registry
    return auth.lookup(name, ref.repository, authfile=authfile, env=env)


def pull(store, ref: str, platform: str | None = None, tls_verify: bool | None = None,
         progress=None, *, authfile: str | None = None, hosts_config=None, env=None,
         session_factory=None, sleep: Callable[[float], None] | None = None) -> str:
    """Pull ``ref`` into ``store``; return the stored image's name.

    ``session_factory(endpoint)`` and ``sleep`` are seams for tests; ``hosts_config`` defaults to
    registries.json and the certs.d directories (see hosts.py)."""
    env = os.environ if env is None else env
    parsed = _reference(ref)
    want = manifests.wanted_platform(platform)
    config = hosts_config if hosts_config is not None else hosts.load_config(env=env)
    progress = progress or _Quiet()
    transfers = Transfers()
    deadline = Deadline(pull_timeout(env), transfers)

    def wait(seconds: float) -> None:
        # cancel-aware sleep: Ctrl-C must not wait out a Retry-After
        if (sleep or transfers.cancel.wait)(seconds) is True or transfers.cancel.is_set():
            raise Cancelled()

    deadline.start()
    try:
        for endpoint in hosts.endpoints(parsed.registry, tls_verify, config):
            client = Client(endpoint, parsed.repository,
                            credentials=_credentials(parsed, endpoint, authfile, env),
                            session=session_factory(endpoint) if session_factory else None,
                            sleep=wait)
            deadline.watch(client.session)
            try:
                with store.importing():     # what it finds stored stays until it is recorded
                    return _Pull(store, parsed, client, progress, transfers, wait).run(want)
            except RegistryError as err:
                if not endpoint.mirror:
                    raise
                progress.message(f"mirror {endpoint.host} failed ({err}); trying the next")
            finally:
                client.session.close()
    except BaseException as err:
        # past the deadline every transfer was cut: whatever broke, that is why
        if deadline.expired and not isinstance(err, KeyboardInterrupt):
            raise deadline.error(f"pull of {parsed}") from err
        if isinstance(err, Cancelled):
            raise ImageError(f"pull of {parsed} interrupted") from err
        raise
    finally:
        deadline.stop()
        progress.close()
    raise AssertionError("unreachable: the registry itself is always the last endpoint")


def check_login(registry: str, username: str, password: str, tls_verify: bool | None = None,
                *, hosts_config=None, session_factory=None, env=None) -> None:
    """Check credentials against ``registry`` as `docker login` does (registry/auth.go
    loginV2): ``GET /v2/`` with them (a Bearer registry's token server first grants a token
    for them) must answer 200. An open registry (200 without credentials) needs none."""
    env = os.environ if env is None else env
    config = hosts_config if hosts_config is not None else hosts.load_config(env=env)
    registry = auth.normalise_registry(registry)        # "https://host:5000/v2/" → host:5000
    endpoint = hosts.endpoints(registry, tls_verify, config)[-1]
    creds = auth.Credentials(username, password)
    transfers = Transfers()

    def wait(seconds: float) -> None:           # a retry's backoff ends at the deadline too
        if transfers.cancel.wait(seconds):
            raise Cancelled()

    client = Client(endpoint, "", credentials=creds, sleep=wait,
                    session=session_factory(endpoint) if session_factory else None)
    deadline = Deadline(pull_timeout(env), transfers)
    deadline.watch(client.session)
    deadline.start()
    try:
        client.ping()
        if client.challenge is None:
            if client.refused:
                raise RegistryError(f"login to {registry} failed: it refuses access (401) "
                                    "without saying how to authenticate (no WWW-Authenticate)")
            return                       # an open registry: nothing to check, as docker does
        headers = client.auth_headers()     # a Bearer token is fetched for these credentials
        r = client.session.get(f"{client.base}/v2/", headers=headers, timeout=client.timeout)
        r.close()
        if r.status_code == 401:
            raise RegistryError(f"unauthorized: wrong username or password for {registry}")
        if r.status_code != 200:
            raise RegistryError(f"login to {registry} failed: {error_text(r)}")
    except BaseException as err:
        if deadline.expired and not isinstance(err, KeyboardInterrupt):
            raise deadline.error(f"login to {registry}") from err
        if isinstance(err, httpclient.HTTPError):
            raise RegistryError(f"login to {registry} failed: {connection_reason(err)}") from err
        raise
    finally:
        deadline.stop()
        client.session.close()
