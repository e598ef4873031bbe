"""`minictr run --gpus` against the fake driver, through the CLI and the runtime.

Inside a container from a small glibc image, the probe dlopens libcuda.so.1 (the fake driver's
library, found through the injected mounts and loader cache), opens the selected GPU's node
(allowed by the device filter: ENXIO where no driver is behind major 195, as on CI; ENODEV where
a real NVIDIA driver has no GPU at the fake minor, as on a GPU machine) and a node of the *other*
GPU made with mknod inside (EPERM: refused by the device filter).
"""
import errno
import json
import os
import subprocess

import pytest

from probeimage import runtime_available, write_oci_layout

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not runtime_available(), reason="needs runtime")]


@pytest.fixture(scope="module")
def layout(probe_rootfs, tmp_path_factory):
    return write_oci_layout(probe_rootfs, str(tmp_path_factory.mktemp("oci") / "probe"))


# the open reached a driver (or found none): the device filter let it through
REACHED = (f"open /dev/nvidia1 errno={errno.ENXIO}", f"open /dev/nvidia1 errno={errno.ENODEV}")


def minictr_run(cli, fake_driver, tmp_path, layout, *args, gpus=None, opts=(), ref=None):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    env = {**os.environ, **fake_driver.env(), "MINICTR_ROOT": str(tmp_path / "store"),
           "MINICTR_STATE": str(tmp_path / "state")}
    cmd = [cli, "run", "--rm", "--cap-add", "MKNOD"]
    if gpus is not None:
        cmd += ["--gpus", gpus]
    res = subprocess.run(cmd + [*opts, ref or f"oci:{layout}", *args], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_selected_gpu_is_reachable_and_the_other_is_filtered(minictr_cli, fake_driver, tmp_path,
                                                              layout):
    # GPU index 0 is bus 0000:01:00.0 with Device Minor 1; GPU index 1 has minor 0
    out = minictr_run(minictr_cli, fake_driver, tmp_path, layout, "/probe", "/dev/nvidia1",
                      "/dev/nvidia0", "mknod:195:0", gpus="0")
    assert "cuDeviceGetCount=2 from /usr/lib/x86_64-linux-gnu/libcuda.so.1" in out
    assert any(line in out for line in REACHED), out
    assert f"open /dev/nvidia0 errno={errno.ENOENT}" in out
    assert "mknod 195:0 errno=0" in out
    assert f"open /dev/probe-195-0 errno={errno.EPERM}" in out


def test_a_cached_plan_gets_its_gpus_at_every_run(minictr_cli, fake_driver, tmp_path, layout):
    """The second run reuses the first one's plan (STATE/.cache/plan), which holds the request's
    resolution with the driver files it rests on, checked at every run. (An oci: reference is
    never cached: the image is loaded and run by name.)"""
    env = {**os.environ, "MINICTR_ROOT": str(tmp_path / "store"),
           "MINICTR_STATE": str(tmp_path / "state")}
    loaded = subprocess.run([minictr_cli, "load", layout], env=env, capture_output=True,
                            text=True, timeout=120, check=True).stdout
    name = loaded.rsplit("Loaded image: ", 1)[1].strip()
    for _ in range(2):
        out = minictr_run(minictr_cli, fake_driver, tmp_path, name, "/probe", "/dev/nvidia1",
                          gpus="0", ref=name)
        assert "cuDeviceGetCount=2" in out and any(line in out for line in REACHED), out
    assert len(os.listdir(tmp_path / "state" / ".cache" / "plan")) == 1
    # the mount points the image lacks were made once, in a lower layer (mountpoints.py),
    # resolved through the image's own links: the probe found libcuda.so.1 where it looked
    (layer,) = [n for n in os.listdir(tmp_path / "state" / ".cache" / "mountpoints")
                if "." not in n]
    # and the first run's resolution was kept: in the memo (gpu/memo.py) and in the plan
    assert [n for n in os.listdir(tmp_path / "state" / ".cache" / "gpu")
            if n.startswith("resolved-")]
    (entry,) = os.listdir(tmp_path / "state" / ".cache" / "plan")
    with open(tmp_path / "state" / ".cache" / "plan" / entry) as fh:
        assert json.load(fh)["plan"]["gpu_witnesses"]
    assert os.path.isfile(tmp_path / "state" / ".cache" / "mountpoints" / layer / "usr" / "bin"
                          / "nvidia-smi")


def test_without_gpus_nothing_is_injected(minictr_cli, fake_driver, tmp_path, layout):
    out = minictr_run(minictr_cli, fake_driver, tmp_path, layout, "/probe", "/dev/nvidia1")
    assert "dlopen failed" in out
    assert f"open /dev/nvidia1 errno={errno.ENOENT}" in out


def test_nvidia_smi_is_injected(minictr_cli, fake_driver, tmp_path, layout):
    if not os.path.exists("/bin/busybox"):
        pytest.skip("needs busybox-static for /bin/sh in the image")
    out = minictr_run(minictr_cli, fake_driver, tmp_path, layout, "/usr/bin/nvidia-smi",
                      gpus="all")
    assert "NVIDIA-SMI 580.65.06" in out


def test_env_file_request_is_injected(minictr_cli, fake_driver, tmp_path, layout):
    """NVIDIA_VISIBLE_DEVICES in an --env-file is in the spec's process.env, which is where
    the one request path reads it."""
    env_file = tmp_path / "gpu.env"
    env_file.write_text("NVIDIA_VISIBLE_DEVICES=0\n")
    out = minictr_run(minictr_cli, fake_driver, tmp_path, layout, "/probe", "/dev/nvidia1",
                      "/dev/nvidia0", opts=("--env-file", str(env_file)))
    assert "cuDeviceGetCount=2" in out
    assert any(line in out for line in REACHED), out
    assert f"open /dev/nvidia0 errno={errno.ENOENT}" in out


def test_spec_bundle_runs_the_same_container_under_runc(minictr_cli, fake_driver, tmp_path,
                                                       layout, probe_rootfs):
    """`minictr spec --bundle DIR --gpus 0` writes the plan `run` executes, with the loader
    cache beside config.json (printed, the spec names the container's state dir, where `run`
    has create write it). runc given that bundle, and minictr-runc, run the same GPU container
    as `minictr run`."""
    import json
    import shutil

    runc = shutil.which("runc")
    if os.geteuid() != 0 or not runc:
        pytest.skip("needs root and runc")
    env = {**os.environ, **fake_driver.env(), "MINICTR_ROOT": str(tmp_path / "store"),
           "MINICTR_STATE": str(tmp_path / "state")}
    probe = ["/probe", "/dev/nvidia1", "/dev/nvidia0", "mknod:195:0"]
    args = ["--gpus", "0", "--cap-add", "MKNOD", f"oci:{layout}", *probe]
    bundle = tmp_path / "bundle"
    res = subprocess.run([minictr_cli, "spec", "--bundle", str(bundle), *args], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    spec = json.loads((bundle / "config.json").read_text())
    cache = [m["source"] for m in spec["mounts"] if m["destination"] == "/etc/ld.so.cache"]
    assert cache == [str(bundle / "ld.so.cache")] and (bundle / "ld.so.cache").is_file()
    printed = json.loads(subprocess.run([minictr_cli, "spec", *args], env=env, check=True,
                                        capture_output=True, text=True).stdout)
    source = [m["source"] for m in printed["mounts"] if m["destination"] == "/etc/ld.so.cache"]
    assert source[0].startswith(str(tmp_path / "state") + "/")
    assert not os.path.exists(source[0])                      # planning wrote nothing
    # root.path names where `run` would mount the image: give runc an unpacked copy
    shutil.copytree(probe_rootfs, tmp_path / "rootfs", symlinks=True)
    spec["root"]["path"] = str(tmp_path / "rootfs")
    (bundle / "config.json").write_text(json.dumps(spec))
    expected = minictr_run(minictr_cli, fake_driver, tmp_path, layout, *probe, gpus="0")
    for cmd in ([runc, "--root", str(tmp_path / "runc")],
                [os.path.join(os.path.dirname(minictr_cli), "minictr-runc"),
                 "--root", str(tmp_path / "minictr-runc")]):
        res = subprocess.run([*cmd, "run", "--bundle", str(bundle), "gpu-bundle"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout == expected, cmd[0]
