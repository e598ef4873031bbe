"""A glibc image holding a probe program, as a root directory and as an OCI image layout.

The probe (PROBE_C) dlopens libcuda.so.1 and calls cuInit/cuDeviceGetCount, then opens the
device paths it is given and, for ``mknod:MAJOR:MINOR``, makes a node in /dev and opens it. It
prints one line per check, with the errno number, so the test can tell the device filter
(EPERM) from a node with no driver behind it (ENXIO).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

from minictr.gpu import ldcache

PROBE_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void try_open(const char *path) {
    int fd = open(path, O_RDWR);
    printf("open %s errno=%d\n", path, fd < 0 ? errno : 0);
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        printf("dlopen failed: %s\n", dlerror());
    } else {
        int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
        int (*count)(int *) = (int (*)(int *))dlsym(h, "cuDeviceGetCount");
        int n = -1;
        Dl_info info;
        if (init && count && init(0) == 0 && count(&n) == 0 && dladdr((void *)count, &info))
            printf("cuDeviceGetCount=%d from %s\n", n, info.dli_fname);
    }
    for (int i = 1; i < argc; i++) {
        unsigned maj, min;
        if (sscanf(argv[i], "mknod:%u:%u", &maj, &min) == 2) {
            char path[64];
            snprintf(path, sizeof path, "/dev/probe-%u-%u", maj, min);
            int rc = mknod(path, S_IFCHR | 0666, makedev(maj, min));
            printf("mknod %u:%u errno=%d\n", maj, min, rc < 0 ? errno : 0);
            if (rc == 0) try_open(path);
        } else {
            try_open(argv[i]);
        }
    }
    fflush(stdout);
    return 0;
}
"""


def runtime_available() -> bool:
    try:
        import minictr.runtime.container  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


def _copy_lib(src: str, rootfs: str, dest: str) -> None:
    target = os.path.join(rootfs, dest.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(os.path.realpath(src), target)


def build_probe_rootfs(rootfs: str, libdir: str = "/usr/lib/x86_64-linux-gnu",
                       os_release: str = 'ID=debian\nVERSION_ID="12"\n') -> str:
    """A small glibc root: /probe, libc and the loader in ``libdir``, its own ld.so.cache and
    os-release, /bin/sh from busybox-static when present. Returns the rootfs path."""
    os.makedirs(rootfs, exist_ok=True)
    src = os.path.join(rootfs, "..", "probe.c")
    with open(src, "w") as f:
        f.write(PROBE_C)
    subprocess.run(["gcc", "-O1", "-o", os.path.join(rootfs, "probe"), src], check=True)
    # libc, plus what a real libcuda and nvidia-smi also need (DT_NEEDED)
    for name in ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1"):
        if os.path.exists(f"/lib/x86_64-linux-gnu/{name}"):
            _copy_lib(f"/lib/x86_64-linux-gnu/{name}", rootfs, f"{libdir}/{name}")
    _copy_lib("/lib64/ld-linux-x86-64.so.2", rootfs, f"{libdir}/ld-linux-x86-64.so.2")
    os.makedirs(os.path.join(rootfs, "lib64"), exist_ok=True)
    os.symlink(f"{libdir}/ld-linux-x86-64.so.2",
               os.path.join(rootfs, "lib64/ld-linux-x86-64.so.2"))
    os.makedirs(os.path.join(rootfs, "etc"), exist_ok=True)
    with open(os.path.join(rootfs, "etc/ld.so.cache"), "wb") as f:
        f.write(ldcache.write([ldcache.Entry(n, f"{libdir}/{n}") for n in
                               sorted(os.listdir(os.path.join(rootfs, libdir.lstrip("/"))))
                               if n.startswith("lib")]))
    with open(os.path.join(rootfs, "etc/os-release"), "w") as f:
        f.write(os_release)
    for d in ("tmp", "dev", "proc", "sys", "usr/bin", "bin"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    if os.path.exists("/bin/busybox"):
        shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
        os.symlink("busybox", os.path.join(rootfs, "bin/sh"))
    return rootfs


def _blob(layout: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_layout(rootfs: str, layout: str, tag: str = "latest") -> str:
    """An OCI image layout (image-spec image-layout.md) with one uncompressed layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(rootfs, arcname=".")
    layer = buf.getvalue()
    os.makedirs(layout, exist_ok=True)
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(layout, layer)}
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/probe"]},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **_blob(layout, json.dumps(manifest).encode()),
                     "annotations": {"org.opencontainers.image.ref.name": tag}}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return layout
