"""Engines ask the runtime for GPUs the ways the NVIDIA Container Toolkit knows, and minictr-runc
injects them itself, from the fake driver (tests/gpu/fakedriver.py: GPU index 0 is minor 1,
index 1 is minor 0), with no NVIDIA software but the driver:

* docker -e NVIDIA_VISIBLE_DEVICES=1, and docker --gpus device=1 (dockerd writes the variable
  and a prestart hook naming nvidia-container-runtime-hook, which the runtime replaces: the
  stand-in on dockerd's PATH fails if it is ever run);
* ctr run --env NVIDIA_VISIBLE_DEVICES=1, and ctr run --annotation cdi.k8s.io/...=nvidia.com/gpu=0
  (the CDI spec `minictr cdi generate` wrote, in the spec dir config.toml names);
* podman run -e NVIDIA_VISIBLE_DEVICES=1, and podman run --annotation cdi.k8s.io/...

The probe (tests/gpu/probeimage.py) dlopens libcuda.so.1, opens both GPU nodes (the injected one
answers ENXIO: allowed, no driver behind the fake node; the other is absent, ENOENT), and makes
the other GPU's node with mknod and opens it: EPERM, the device filter.
"""
from __future__ import annotations

import errno
import uuid

import pytest

from engines_harness import GPU_IMAGE, run

pytestmark = [pytest.mark.root, pytest.mark.engines]

# index 1 = minor 0: /dev/nvidia0 is injected, /dev/nvidia1 (195:1) must stay out
PROBE = ["/probe", "/dev/nvidia0", "/dev/nvidia1", "mknod:195:1"]
INDEX_0 = ["/probe", "/dev/nvidia1", "/dev/nvidia0", "mknod:195:0"]


def assert_exactly_one_gpu(output: str, minor: int) -> None:
    other = 1 - minor
    assert "cuDeviceGetCount=2 from /usr/lib/x86_64-linux-gnu/libcuda.so.1" in output, output
    assert f"open /dev/nvidia{minor} errno={errno.ENXIO}" in output, output
    assert f"open /dev/nvidia{other} errno={errno.ENOENT}" in output, output
    assert f"open /dev/probe-195-{other} errno={errno.EPERM}" in output, output


def test_docker_env_request(docker_gpu, target, fake_gpus):
    res = docker_gpu.docker("run", "--rm", "--runtime", target.docker_name, "--network", "none",
                            "-e", "NVIDIA_VISIBLE_DEVICES=1", GPU_IMAGE, *PROBE)
    assert res.returncode == 0, res.stderr
    assert_exactly_one_gpu(res.stdout, 0)


def test_docker_gpus_flag_replaces_the_nvidia_hook(docker_gpu, target, fake_gpus,
                                                    engines_session):
    """docker run --gpus device=1: dockerd adds NVIDIA_VISIBLE_DEVICES=1 and the prestart hook
    (seen through the spy); the runtime injects GPU 1 itself and never runs the hook."""
    before = engines_session.hook_calls()
    name = target.docker_spy_name if target.spy else target.docker_name
    if target.spy:
        target.spy_reset()
    res = docker_gpu.docker("run", "--rm", "--runtime", name, "--network", "none",
                            "--gpus", "device=1", GPU_IMAGE, *PROBE)
    assert res.returncode == 0, res.stderr
    assert_exactly_one_gpu(res.stdout, 0)
    assert engines_session.hook_calls() == before
    if target.spy:
        create = next(c for c in target.spy_calls() if "create" in c["argv"])
        config = target.spy_config(create["argv"][-1])
        hooks = [h for h in config["hooks"]["prestart"]       # (libnetwork-setkey is the other)
                 if h["args"][0] == "nvidia-container-runtime-hook"]
        assert [h["args"] for h in hooks] == [["nvidia-container-runtime-hook", "prestart"]]
        assert hooks[0]["path"] == str(engines_session.hook_dir / "nvidia-container-runtime-hook")
        assert "NVIDIA_VISIBLE_DEVICES=1" in config["process"]["env"]


def test_docker_gpus_all_and_capabilities(docker_gpu, target, fake_gpus):
    res = docker_gpu.docker("run", "--rm", "--runtime", target.docker_name, "--network", "none",
                            "--gpus", "all,capabilities=utility", GPU_IMAGE,
                            "/bin/sh", "-c", "ls /dev; nvidia-smi; /probe")
    assert res.returncode == 0, res.stderr
    assert {"nvidia0", "nvidia1", "nvidiactl"} <= set(res.stdout.split())
    assert "nvidia-uvm" not in res.stdout.split()              # compute was not asked for
    assert "NVIDIA-SMI 580.65.06" in res.stdout
    assert "dlopen failed" in res.stdout                        # nor libcuda


def test_docker_without_a_request_gets_nothing(docker_gpu, target, fake_gpus):
    res = docker_gpu.docker("run", "--rm", "--runtime", target.docker_name, "--network", "none",
                            GPU_IMAGE, *PROBE)
    assert res.returncode == 0, res.stderr
    assert "dlopen failed" in res.stdout
    assert f"open /dev/nvidia0 errno={errno.ENOENT}" in res.stdout


def test_docker_request_for_a_gpu_that_does_not_exist(docker_gpu, target, fake_gpus):
    res = docker_gpu.docker("run", "--rm", "--runtime", target.docker_name, "--network", "none",
                            "-e", "NVIDIA_VISIBLE_DEVICES=7", GPU_IMAGE, "/probe")
    assert res.returncode != 0
    assert "unknown GPU '7'" in res.stderr, res.stderr


def _cid(target) -> str:
    return f"{target.key}-gpu-{uuid.uuid4().hex[:8]}"


def test_ctr_env_request(containerd_gpu, target, fake_gpus):
    res = run(containerd_gpu.run_argv(target, _cid(target), *PROBE, image=GPU_IMAGE,
                                      flags=("--rm", "--env", "NVIDIA_VISIBLE_DEVICES=1")))
    assert res.returncode == 0, res.stderr
    assert_exactly_one_gpu(res.stdout, 0)


def test_ctr_cdi_annotation(containerd_gpu, target, fake_gpus):
    """The Kubernetes device plugin's cdi-annotations strategy: the annotation wins over the
    image's env, and the devices come from the CDI spec file (index 0 = /dev/nvidia1)."""
    res = run(containerd_gpu.run_argv(
        target, _cid(target), *INDEX_0, image=GPU_IMAGE,
        flags=("--rm", "--annotation", "cdi.k8s.io/test=nvidia.com/gpu=0",
               "--env", "NVIDIA_VISIBLE_DEVICES=all")))
    assert res.returncode == 0, res.stderr
    assert_exactly_one_gpu(res.stdout, 1)


def test_podman_env_request(podman_gpu, target, fake_gpus):
    res = podman_gpu("run", "--rm", *podman_gpu.run_flags(), "--cap-add", "MKNOD",
                     "-e", "NVIDIA_VISIBLE_DEVICES=1", GPU_IMAGE, *PROBE, runtime=target.path)
    assert res.returncode == 0, res.stderr
    assert_exactly_one_gpu(res.stdout, 0)


def test_docker_gpus_with_minictr_as_the_default_runtime(dockerd_gpu_default, fake_gpus,
                                                         engines_session):
    """daemon.json {"runtimes": {"minictr": {"path": ...}}, "default-runtime": "minictr"}: a
    plain `docker run --gpus device=1` gets GPU 1 from minictr-runc."""
    before = engines_session.hook_calls()
    res = dockerd_gpu_default.docker("run", "--rm", "--network", "none", "--gpus", "device=1",
                                     GPU_IMAGE, *PROBE)
    assert res.returncode == 0, res.stderr
    assert_exactly_one_gpu(res.stdout, 0)
    assert engines_session.hook_calls() == before


def test_podman_cdi_annotation(podman_gpu, target, fake_gpus):
    res = podman_gpu("run", "--rm", *podman_gpu.run_flags(), "--cap-add", "MKNOD",
                     "--annotation", "cdi.k8s.io/test=nvidia.com/gpu=0", GPU_IMAGE, *INDEX_0,
                     runtime=target.path)
    assert res.returncode == 0, res.stderr
    assert_exactly_one_gpu(res.stdout, 1)
