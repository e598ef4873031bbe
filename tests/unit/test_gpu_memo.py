"""The GPU resolution memo (minictr/gpu/memo.py): a run with the same request, image, settings
and code replays an earlier resolution, equal to what resolving again gives, only while every
host file it rests on answers the same; warnings are replayed; Slurm jobs are not memoised."""
import os
import sys

import pytest

import imagefactory as f
from minictr import api
from minictr.config import Paths
from minictr.gpu import resolve as resolve_mod
from minictr.gpu.request import GpuSettings
from minictr.image.store import Store
from minictr.spec.options import RunOptions
from test_store import import_image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "gpu"))
import fakedriver  # noqa: E402

OPTS = RunOptions(image="localhost/t:latest", command=("/bin/true",), rm=True, gpus="all")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    paths = Paths(store=str(tmp_path / "store"), state=str(tmp_path / "state"),
                  rootless=os.geteuid() != 0)
    import_image(Store(paths.store, rootless=paths.rootless), f.make_image(f.BUSYBOXISH))
    drv = fakedriver.build(str(tmp_path / "drv"))
    settings = GpuSettings(drv.roots._replace(mps_pipe_dir=str(tmp_path / "mps")))
    unresolved = api.plan(paths, OPTS, container_id="a" * 64,
                          files_dir=os.path.join(paths.state, "a" * 64), gpus=False)
    assert unresolved.gpu_request
    return paths, drv, settings, unresolved


def resolve(setup, cid, warnings=None):
    paths, _, settings, unresolved = setup
    files_dir = os.path.join(paths.state, cid)
    return api.with_gpus(paths, unresolved, gpu_roots=settings, files_dir=files_dir,
                         warn=None if warnings is None else warnings.append), files_dir


def replayed(plan) -> bool:
    return any(n.startswith("GPU request: as resolved by an earlier run") for n in plan.notes)


def test_a_replay_is_what_resolving_again_gives(setup, monkeypatch):
    paths, _, settings, unresolved = setup
    heard_first, heard_second = [], []
    first, _ = resolve(setup, "1" * 64, heard_first)
    assert not replayed(first)
    monkeypatch.setattr(resolve_mod, "resolve", lambda *a, **k: pytest.fail("resolved again"))
    second, files_dir = resolve(setup, "2" * 64, heard_second)
    assert replayed(second)
    monkeypatch.undo()
    # what the resolution gives for this container, computed (a read_file: no memo)
    from minictr.image import merged

    layers = list(unresolved.rootfs.lowerdirs)
    want = api.with_gpus(paths, unresolved, lambda p: merged.read_file(layers, p),
                         gpu_roots=settings, files_dir=files_dir)
    assert not replayed(want)
    assert second.spec == want.spec and second.files == want.files
    assert os.path.join(files_dir, "ld.so.cache") in str(second.spec["mounts"])
    assert heard_first and heard_second == heard_first          # the warnings come again


@pytest.mark.parametrize("change", ["library", "mps", "gpu"])
def test_a_changed_host_file_means_resolving_again(setup, change):
    _, drv, settings, _ = setup
    resolve(setup, "1" * 64)
    assert replayed(resolve(setup, "2" * 64)[0])
    if change == "library":            # the driver's library replaced
        lib = os.path.join(drv.driver_root, "usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06")
        with open(lib, "ab") as out:
            out.write(b"\0")
    elif change == "mps":              # an MPS daemon started
        os.makedirs(settings.roots.mps_pipe_dir)
        open(os.path.join(settings.roots.mps_pipe_dir, "control"), "w").close()
    else:                              # a GPU gone from the driver's proc files
        gpus = os.path.join(drv.proc_root, "driver/nvidia/gpus")
        os.rename(os.path.join(gpus, sorted(os.listdir(gpus))[-1]), os.path.join(drv.proc_root,
                                                                                "gone"))
    third, _ = resolve(setup, "3" * 64)
    assert not replayed(third)
    if change == "mps":
        assert "CUDA_MPS_PIPE_DIRECTORY=" + settings.roots.mps_pipe_dir in \
            third.spec["process"]["env"]
    assert replayed(resolve(setup, "4" * 64)[0])          # and that is remembered in turn


def test_another_request_or_a_slurm_job_is_not_replayed(setup, monkeypatch):
    paths, _, settings, _ = setup
    resolve(setup, "1" * 64)
    other = api.plan(paths, OPTS._replace(gpus="0"), container_id="5" * 64,
                     files_dir=os.path.join(paths.state, "5" * 64), gpus=False)
    got = api.with_gpus(paths, other, gpu_roots=settings,
                        files_dir=os.path.join(paths.state, "6" * 64))
    assert not replayed(got)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert not replayed(resolve(setup, "7" * 64)[0])
