"""The plan cache (minictr/plancache.py): a hit gives the plan a fresh build would, made the
new container's; what the plan was made from is in the key; an entry that is not the caller's,
not whole, or not this key's is ignored."""
import json
import os
import shutil

import pytest

import imagefactory as f
from minictr import api, cachefiles, plancache
from minictr.config import Paths
from minictr.errors import GPUError
from minictr.image.store import Store
from minictr.spec.options import RunOptions
from test_store import import_image


@pytest.fixture
def paths(tmp_path):
    p = Paths(store=str(tmp_path / "store"), state=str(tmp_path / "state"),
              rootless=os.geteuid() != 0)
    import_image(Store(p.store, rootless=p.rootless), f.make_image(f.BUSYBOXISH))
    return p


OPTS = RunOptions(image="localhost/t:latest", command=("/bin/true",), rm=True,
                  env=("A=1",), tmpfs=("/scratch",))


def fresh(paths, opts, cid, gpus=True):
    return api.plan(paths, opts, container_id=cid, files_dir=os.path.join(paths.state, cid),
                    gpus=gpus)


def cache_it(paths, opts=OPTS):
    """A miss: plan for a first container, and keep it. Returns (key, that plan)."""
    p, cached = api._cached_plan(paths, opts, "a" * 64, "missing", False)
    assert p is None and cached is not None and not cached[1]
    made = fresh(paths, opts, "a" * 64, gpus=False)       # as api._prepare makes it
    api._keep_plan(paths, opts, cached, made)
    assert os.path.exists(plancache.entry_path(paths, cached[0]))
    return cached[0], made


def hit(paths, opts=OPTS, cid="b" * 64):
    p, cached = api._cached_plan(paths, opts, cid, "missing", False)
    return p


def test_a_hit_is_the_plan_a_fresh_build_makes_for_the_new_container(paths):
    cache_it(paths)
    cid = os.urandom(32).hex()
    got, want = hit(paths, cid=cid), fresh(paths, OPTS, cid)
    assert got is not None
    assert got.spec == want.spec and got.rootfs == want.rootfs and got.files == want.files
    assert (got.container_id, got.name, got.image, got.layers, got.notes, got.dns_driver) == \
        (want.container_id, want.name, want.image, want.layers, want.notes, want.dns_driver)
    assert cid[:12] in got.spec["hostname"] and "a" * 12 not in json.dumps(got.spec)


def test_the_key_holds_the_options_the_image_and_the_host_facts(paths, monkeypatch):
    base = plancache.key_of(plancache.key_material(paths, OPTS))
    assert plancache.key_of(plancache.key_material(paths, OPTS._replace(env=("A=2",)))) != base
    import_image(Store(paths.store, rootless=paths.rootless),
                 f.make_image([f.BUSYBOXISH[0]]), names=("localhost/t:latest",))
    retagged = plancache.key_of(plancache.key_material(paths, OPTS))
    assert retagged != base
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert plancache.key_of(plancache.key_material(paths, OPTS)) != retagged
    monkeypatch.delenv("SLURM_JOB_ID")
    from minictr import host

    limits = host.launcher_limits
    monkeypatch.setattr(host, "launcher_limits", lambda r: (("CAP_CHOWN",), *limits(r)[1:]))
    assert plancache.key_of(plancache.key_material(paths, OPTS)) != retagged


def test_the_key_holds_minictr_s_code(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "m.py").write_text("x = 1\n")
    before = plancache.code_signature(str(pkg))
    (pkg / "sub" / "m.py").write_text("x = 22\n")
    assert plancache.code_signature(str(pkg)) != before


def test_options_that_read_the_host_are_not_cached(paths):
    for opts in (OPTS._replace(volumes=("/tmp:/t",)), OPTS._replace(env=("HOME",)),
                 OPTS._replace(network="bridge"), OPTS._replace(devices=("/dev/fuse",)),
                 OPTS._replace(security_opts=("seccomp=/x.json",)),
                 OPTS._replace(image="./img.sqsh"), OPTS._replace(image="oci:/dir")):
        assert not plancache.cacheable(opts, "missing"), opts
    assert not plancache.cacheable(OPTS, "always")
    assert plancache.cacheable(OPTS, "missing")
    assert api._cached_plan(paths, OPTS._replace(volumes=("/tmp:/t",)), "b" * 64, "missing",
                            False) == (None, None)


def test_a_gpu_request_is_kept_unresolved_and_resolved_at_every_run(paths, tmp_path):
    """--gpus is cacheable: the entry holds the spec with the request in it, and every run
    resolves it against the driver of the moment, reading the image through the plan's
    layers; the result is the plan a fresh build makes. A driver gone since the entry was
    written is seen (the cached entry must not carry the last run's injection)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
    import fakedriver
    from minictr.gpu.request import GpuSettings

    drv = fakedriver.build(str(tmp_path / "drv"))
    roots = GpuSettings(drv.roots)
    opts = OPTS._replace(gpus="all")
    assert plancache.cacheable(opts, "missing")
    key, made = cache_it(paths, opts)
    entry = json.loads(open(plancache.entry_path(paths, key)).read())
    assert entry["plan"]["gpu_request"] is True
    assert "/dev/nvidiactl" not in json.dumps(entry)            # nothing of the driver in it
    cid = os.urandom(32).hex()
    files_dir = os.path.join(paths.state, cid)
    got = api.with_gpus(paths, hit(paths, opts, cid), gpu_roots=roots, files_dir=files_dir)
    want = api.plan(paths, opts, container_id=cid, files_dir=files_dir, gpu_roots=roots)
    assert "/dev/nvidiactl" in json.dumps(got.spec)
    assert got.spec == want.spec
    assert got.files == want.files
    # the first run discovered the driver, the second read the discovery cache
    assert [n[:20] for n in got.notes] == [n[:20] for n in want.notes]
    assert not got.gpu_request
    shutil.rmtree(drv.proc_root)                                # the driver is unloaded
    with pytest.raises(GPUError, match="no NVIDIA driver"):
        api.with_gpus(paths, hit(paths, opts, cid), gpu_roots=roots, files_dir=files_dir)
    plain = hit(paths, OPTS, cid) or cache_it(paths)[1]
    assert api.with_gpus(paths, plain, gpu_roots=roots, files_dir=files_dir) is plain


def test_an_entry_of_another_user_is_ignored(paths, monkeypatch):
    key, _ = cache_it(paths)
    assert plancache.load(paths, key, "b" * 64) is not None
    path = plancache.entry_path(paths, key)
    if os.geteuid() == 0:                    # really another user's entry, in root's cache
        os.chown(path, 1000, 1000)
        assert plancache.load(paths, key, "b" * 64) is None
        os.chown(path, 0, 0)
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)     # the entry and its directory
    assert plancache.load(paths, key, "b" * 64) is None      # are no longer ours


def test_a_cache_directory_others_can_write_is_ignored(paths):
    key, _ = cache_it(paths)
    directory = os.path.dirname(plancache.entry_path(paths, key))
    os.chmod(directory, 0o777)
    assert hit(paths) is None
    os.chmod(directory, 0o700)
    assert hit(paths) is not None


def test_a_link_in_place_of_an_entry_is_not_followed(paths, tmp_path):
    key, _ = cache_it(paths)
    path = plancache.entry_path(paths, key)
    os.rename(path, tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", path)
    assert hit(paths) is None


def _rewrite(paths, key, change):
    path = plancache.entry_path(paths, key)
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(change(data))


@pytest.mark.parametrize("change", [
    lambda d: d[:len(d) // 2],                                            # torn
    lambda d: b"\xff" + d,                                                # not UTF-8
    lambda d: b"[]",                                                      # not an entry
    lambda d: d.replace(b'"key": "', b'"key": "0'),                       # another key's
    lambda d: d.replace(b'"id": "' + b"a" * 64, b'"id": "' + b"a" * 12),  # not an id
    lambda d: d.replace(b'"lowerdirs": [', b'"lowerdirs": [7, '),         # wrong shape
    lambda d: d.replace(b'"driver": "overlay"', b'"driver": "x"'),
    lambda d: d.replace(b'"image": "', b'"image": 7, "x": "'),
], ids=["torn", "not-utf8", "not-an-entry", "other-key", "short-id", "lowerdirs", "driver",
        "image"])
def test_a_corrupt_or_planted_entry_is_ignored(paths, change):
    key, _ = cache_it(paths)
    _rewrite(paths, key, change)
    assert hit(paths) is None


def test_an_entry_filed_under_another_key_is_ignored(paths):
    """An entry copied to the name of another key (another image, other options) is not
    taken for it: the key inside must match."""
    key, _ = cache_it(paths)
    other = plancache.key_of(plancache.key_material(paths, OPTS._replace(env=("A=2",))))
    os.rename(plancache.entry_path(paths, key), plancache.entry_path(paths, other))
    assert hit(paths, OPTS._replace(env=("A=2",))) is None


def test_a_plan_made_while_the_store_changed_is_not_kept(paths):
    p, cached = api._cached_plan(paths, OPTS, "a" * 64, "missing", False)
    made = fresh(paths, OPTS, "a" * 64)
    import_image(Store(paths.store, rootless=paths.rootless),
                 f.make_image([f.BUSYBOXISH[0]]), names=("localhost/t:latest",))
    api._keep_plan(paths, OPTS, cached, made)
    assert not os.path.exists(plancache.entry_path(paths, cached[0]))


def test_the_cache_keeps_a_bounded_number_of_entries(paths):
    key, _ = cache_it(paths)
    directory = os.path.dirname(plancache.entry_path(paths, key))
    for i in range(5):
        assert cachefiles.write(os.path.join(directory, f"{i:064x}.json"), b"{}")
    plancache._prune(directory, keep=3)
    assert len(os.listdir(directory)) == 3


def test_unreadable_minictr_files_mean_no_cache_not_a_failed_run(paths, tmp_path, monkeypatch):
    """A dangling link among minictr's own files makes the code signature unreadable: the run
    goes on without the cache instead of failing on it."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    os.symlink(tmp_path / "gone", pkg / "mcinit")
    with pytest.raises(OSError):
        plancache.code_signature(str(pkg))
    real = plancache.code_signature
    monkeypatch.setattr(plancache, "code_signature", lambda: real(str(pkg)))
    assert plancache.key(paths, OPTS) is None
    assert api._cached_plan(paths, OPTS, "b" * 64, "missing", False) == (None, None)


def _gpu_setup(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
    import fakedriver
    from minictr.gpu.request import GpuSettings

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    drv = fakedriver.build(str(tmp_path / "drv"))
    return drv, GpuSettings(drv.roots._replace(mps_pipe_dir=str(tmp_path / "mps")))


def prepare(paths, opts, roots, heard=None):
    _, p, _ = api._prepare(paths, opts, gpu_roots=roots, dry_run=False, pull_policy="missing",
                           progress=None, warn=None if heard is None else heard.append,
                           explain=None)
    return p


def test_a_gpu_plan_is_kept_resolved_and_replayed_while_the_driver_files_hold(
        paths, tmp_path, monkeypatch):
    """A `--gpus` plan whose resolution may be replayed (gpu/memo.py's conditions) is kept
    with it: the next run imports none of the resolution's code (not even the memo's or the
    spec edits'), gets the same spec, loader cache and warnings, for its own container; a
    replaced driver library means the plan is made and resolved again."""
    import sys

    from minictr.gpu import resolve as resolve_mod

    drv, roots = _gpu_setup(tmp_path, monkeypatch)
    opts = OPTS._replace(gpus="all")
    heard_first, heard_second = [], []
    first = prepare(paths, opts, roots, heard_first)
    key = plancache.key(paths, opts, roots)
    entry = json.loads(open(plancache.entry_path(paths, key)).read())
    assert entry["plan"]["gpu_request"] is False and entry["plan"]["gpu_witnesses"]
    assert "/dev/nvidiactl" in json.dumps(entry["plan"]["spec"])
    for name in ("minictr.gpu.memo", "minictr.gpu.resolve", "minictr.spec.edits",
                 "minictr.spec.gpu_request", "minictr.image.store"):
        monkeypatch.setitem(sys.modules, name, None)      # importing it now fails
    second = prepare(paths, opts, roots, heard_second)
    monkeypatch.undo()
    a, b = first.container_id, second.container_id
    assert json.dumps(second.spec) == \
        json.dumps(first.spec).replace(a, b).replace(a[:12], b[:12])
    assert os.path.join(paths.state, b, "ld.so.cache") in json.dumps(second.spec["mounts"])
    assert dict(second.files)["ld.so.cache"] == dict(first.files)["ld.so.cache"]
    assert heard_first and heard_second == heard_first      # the warnings come again
    # the driver's library replaced: resolved again (and that is kept in turn)
    lib = os.path.join(drv.driver_root, "usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06")
    with open(lib, "ab") as out:
        out.write(b"\0")
    calls = []
    real = resolve_mod.resolve
    monkeypatch.setattr(resolve_mod, "resolve", lambda *a, **k: calls.append(1) or real(*a, **k))
    prepare(paths, opts, roots)
    assert calls == [1]
    prepare(paths, opts, roots)
    assert calls == [1]


def test_a_gpu_request_resolved_at_every_run_is_kept_unresolved(paths, tmp_path, monkeypatch):
    """In a Slurm job the allocation comes from the job's environment: nothing to replay, so
    the plan is kept with its request, resolved again at every run."""
    from minictr.gpu import resolve as resolve_mod

    _, roots = _gpu_setup(tmp_path, monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "7")         # a step without GPUs: none injected
    calls = []
    real = resolve_mod.resolve
    monkeypatch.setattr(resolve_mod, "resolve", lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = OPTS._replace(gpus="all")
    heard = []
    prepare(paths, opts, roots, heard)
    key = plancache.key(paths, opts, roots)
    entry = json.loads(open(plancache.entry_path(paths, key)).read())
    assert entry["plan"]["gpu_request"] is True and entry["plan"]["gpu_witnesses"] is None
    prepare(paths, opts, roots, heard)
    assert calls == [1, 1]
    assert len(heard) == 2 and "Slurm job 7" in heard[1]


def test_the_key_holds_what_a_gpu_resolution_reads_besides_the_spec(paths, tmp_path,
                                                                   monkeypatch):
    """The driver-root flags and variables, the MPS pipe directory and the settings files
    (the driver's own files are the entry's witnesses)."""
    config = tmp_path / "config.toml"
    config.write_text("[nvidia]\n")
    monkeypatch.setenv("MINICTR_CONFIG", str(config))
    base = plancache.key(paths, OPTS, ("/", None, None))
    assert plancache.key(paths, OPTS, ("/d", None, None)) != base
    for var in ("MINICTR_NVIDIA_DRIVER_ROOT", "CUDA_MPS_PIPE_DIRECTORY"):
        monkeypatch.setenv(var, "/x")
        assert plancache.key(paths, OPTS, ("/", None, None)) != base, var
        monkeypatch.delenv(var)
    assert plancache.key(paths, OPTS, ("/", None, None)) == base
    config.write_text("[nvidia]\ndisable-require = true\n")
    assert plancache.key(paths, OPTS, ("/", None, None)) != base
