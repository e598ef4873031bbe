"""Seed inputs for each fuzz target, made by the project's own builders (tests/unit/imagefactory,
tests/unit/layertar, rootfs_tools, the fake GPU driver, minictr's own ld.so.cache and CDI
writers) and, where this machine has them, real files (GNU tar's sparse formats, the host's
/etc/ld.so.cache). A coverage-guided fuzzer starts from valid inputs and mutates them: the
seeds let it reach past the first format check at once.

    seeds.write_corpus("tar", directory)   # one file per seed
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

from tests.unit import imagefactory as f
from tests.unit.layertar import D, F, H, M, S, make_tar


def _tars() -> list[bytes]:
    from rootfs_tools.tarball import TarBuilder, changeset

    out = [f.tar_bytes(layer) for layer in f.BUSYBOXISH]
    members = [D("etc"), F("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", uid=0),
               F("usr/bin/tool", b"\x7fELF", mode=0o4755, xattrs={"user.note": "x"}),
               S("etc/alias", "passwd"), H("etc/passwd2", "etc/passwd"),
               M("dev/null", "char", devmajor=1, devminor=3), M("run/fifo", "fifo"),
               F("a/" + "long" * 40 + "/name", b"long name")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        try:
            out.append(make_tar(members, fmt))
        except ValueError:          # ustar cannot hold the long name
            out.append(make_tar(members[:-1], fmt))
    out.append(changeset(deleted=["etc/hostname"], opaque=["var/cache"],
                         files={"var/cache/new": b"new\n"}).to_bytes())
    tb = TarBuilder().dir("d").symlink("d/up", "../..").hardlink("d/h", "d/up")
    out.append(tb.file(".wh..wh..opq").file("d/.wh.gone").to_bytes())
    out += _sparse_tars()
    return out


def _sparse_tars() -> list[bytes]:
    """GNU tar's sparse members in each format it writes (old GNU 'S', PAX 0.0, 0.1, 1.0)."""
    if not shutil.which("tar"):
        return []
    out = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sparse.img")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
        for i in range(6):                   # more than 4 regions: GNU extension blocks
            os.pwrite(fd, bytes([65 + i]) * 7, i * 8192 + 3)
        os.ftruncate(fd, 64 << 10)
        os.close(fd)
        for fmt, version in (("gnu", None), ("pax", "0.0"), ("pax", "0.1"), ("pax", "1.0")):
            archive = os.path.join(d, f"{fmt}-{version}.tar")
            args = ["tar", "--sparse", f"--format={fmt}", "-cf", archive, "-C", d,
                    "sparse.img", "--owner=0", "--group=0", "--mtime=@0"]
            if version:
                args.insert(2, f"--sparse-version={version}")
            if subprocess.run(args, capture_output=True).returncode == 0:
                with open(archive, "rb") as a:
                    out.append(a.read())
    return out


def _image():
    return f.make_image(f.BUSYBOXISH, compression=None)


def _manifests() -> list[bytes]:
    image = _image()
    gz = f.make_image(f.BUSYBOXISH, compression="gzip")
    doc = json.loads(image.manifest)
    docker = {**doc, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
              "config": {**doc["config"],
                         "mediaType": "application/vnd.docker.container.image.v1+json"}}
    index = {"schemaVersion": 2, "mediaType": f.OCI_INDEX, "manifests": [
        f.descriptor(image.manifest, f.OCI_MANIFEST,
                     platform={"os": "linux", "architecture": "amd64", "variant": "v2"}),
        f.descriptor(gz.manifest, f.OCI_MANIFEST,
                     platform={"os": "linux", "architecture": "arm", "variant": "v7"}),
        f.descriptor(b"{}", f.OCI_MANIFEST, platform={"os": "unknown",
                                                     "architecture": "unknown"})]}
    return [image.manifest, gz.manifest, json.dumps(docker).encode(),
            json.dumps(index).encode()]


def _configs() -> list[bytes]:
    from rootfs_tools.oci import ImageConfig

    config = ImageConfig(cmd=["/bin/sh", "-c", "echo hi"], entrypoint=["/init"],
                         env=["PATH=/bin", "HOME=/root", "NOVALUE"], working_dir="/srv",
                         user="1000:1000", labels={"a": "b"}, architecture="amd64")
    return [_image().config,
            json.dumps(config.to_json(["sha256:" + "cd" * 32], ["layer"])).encode()]


def _docker_manifest_json() -> list[bytes]:
    image = _image()
    layers = [f"blobs/sha256/{d[7:]}" for d in image.layer_digests]
    return [json.dumps([{"Config": image.config_digest[7:] + ".json",
                         "RepoTags": ["example.test/busybox:latest"], "Layers": layers}]).encode(),
            json.dumps([{"Config": f"blobs/sha256/{image.config_digest[7:]}",
                         "RepoTags": [], "Layers": layers}]).encode()]


def _oci_indexes() -> list[bytes]:
    image = _image()
    plain = {"schemaVersion": 2, "mediaType": f.OCI_INDEX, "manifests": [
        f.descriptor(image.manifest, f.OCI_MANIFEST, annotations={
            "org.opencontainers.image.ref.name": "latest",
            "io.containerd.image.name": "example.test/busybox:latest"},
            platform={"os": "linux", "architecture": "amd64"})]}
    return [json.dumps(plain).encode(), json.dumps({**plain, "manifests": [
        {**plain["manifests"][0], "annotations": {"org.opencontainers.image.ref.name":
                                                  "example.test/x:1"}}]}).encode()]


REFERENCES = ["busybox", "busybox:1.36", "library/busybox:latest", "docker.io/library/debian:12",
              "ghcr.io/owner/repo:tag", "localhost:5000/a/b/c:v1.2-rc_3",
              "[::1]:5000/img@sha256:" + "ab" * 32, "Registry.Example/ns/img", "a" * 64,
              "quay.io/x/y:t@sha512:" + "cd" * 64, "index.docker.io/user/img", "sha256:abc"]

CHALLENGES = ['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/busybox:pull"',
              'Basic realm="Registry Realm"', 'Bearer realm="http://127.0.0.1:5001/token", '
              'error="invalid_token", Basic realm="x"', 'Negotiate', '120',
              'Wed, 21 Oct 2015 07:28:00 GMT', '{"errors":[{"code":"DENIED","message":"no"}]}']


def _ldcaches() -> list[bytes]:
    from minictr.gpu import ldcache
    from minictr.gpu.ldcache import Entry

    entries = [Entry("libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"),
               Entry("libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
               Entry("libc.so.6", "/usr/lib/i386-linux-gnu/libc.so.6", ldcache.FLAG_ELF_LIBC6),
               Entry("libnvidia-ml.so.1", "/usr/lib64/glibc-hwcaps/x86-64-v3/libnvidia-ml.so.1",
                     hwcap=ldcache.HWCAP_EXTENSION)]
    out = [ldcache.write(entries)]
    from tests.unit.test_gpu_ldcache import old_format

    old = old_format(entries)
    out += [old, old + b"\0" * (-len(old) % 8) + ldcache.write(entries)]
    if os.path.exists("/etc/ld.so.cache") and os.path.getsize("/etc/ld.so.cache") < 1 << 20:
        with open("/etc/ld.so.cache", "rb") as c:
            out.append(c.read())
    return out


def _elfs() -> list[bytes]:
    if not shutil.which("gcc"):
        return []
    from tests.gpu import fakedriver

    out = []
    for path in fakedriver.compiled_libraries().values():
        with open(path, "rb") as lib:
            out.append(lib.read())
    return out


def _cdi_specs() -> list[bytes]:
    import yaml

    spec = {"cdiVersion": "1.1.0", "kind": "nvidia.com/gpu", "devices": [
        {"name": "0", "containerEdits": {"deviceNodes": [
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]}},
        {"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/zero"}]}}],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "mounts": [{"hostPath": "/usr/lib/libx.so", "containerPath": "/usr/lib/libx.so",
                        "options": ["ro", "nosuid", "nodev", "rbind"]}],
            "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk",
                       "args": ["nvidia-ctk", "hook", "update-ldcache"], "timeout": 5}],
            "additionalGids": [44]}}
    return [json.dumps(spec).encode(), yaml.safe_dump(spec).encode()]


SIF_IMAGES = "/usr/share/gocode/src/github.com/sylabs/sif/test/images"


def _squashfs_tree(root: str) -> None:
    """A small tree that reaches each part of the reader: files in blocks and in fragments, a
    sparse block, symlinks (absolute, relative, dangling), nested dirs, and the config files
    each single-file convention looks for."""
    os.makedirs(os.path.join(root, "etc"))
    os.makedirs(os.path.join(root, ".minictr"))
    os.makedirs(os.path.join(root, "a", "b", "c"))
    files = {"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/u:/bin/sh\n",
             "etc/group": b"root:x:0:\nvideo:x:44:user\n",
             "etc/environment": b'PATH="/usr/bin:/bin"\nexport LANG=C.UTF-8\n',
             "etc/rc": b"exec \"$@\"\n",
             ".minictr/image.json": json.dumps({"config": {"Env": ["A=1"],
                                                            "Cmd": ["/bin/sh"]}}).encode(),
             "a/b/c/big": bytes(range(256)) * 40,           # past one 4 KiB block
             "a/sparse": bytes(8192) + b"end"}
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as out:
            out.write(data)
    os.symlink("/etc", os.path.join(root, "link"))
    os.symlink("../etc/passwd", os.path.join(root, "a", "pw"))
    os.symlink("nowhere", os.path.join(root, "a", "dangling"))


def _squashfs_images() -> list[bytes]:
    tool = shutil.which("mksquashfs")
    if tool is None:
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="minictr-fuzz-seed-") as work:
        tree = os.path.join(work, "tree")
        _squashfs_tree(tree)
        for i, options in enumerate((["-comp", "gzip"], ["-comp", "xz"], ["-comp", "zstd"],
                                     ["-comp", "gzip", "-noI", "-noD", "-noF"],
                                     ["-comp", "gzip", "-no-fragments"])):
            image = os.path.join(work, f"{i}.sqsh")
            res = subprocess.run([tool, tree, image, "-noappend", "-quiet", "-no-progress",
                                  "-b", "4096", "-all-root", *options], capture_output=True)
            if res.returncode == 0:
                with open(image, "rb") as f:
                    out.append(f.read())
    return out


def _sif_images() -> list[bytes]:
    """The SIF reference implementation's test images (golang-github-sylabs-sif-dev), and a
    small squashfs placed where one of them keeps its root partition."""
    out = []
    for name in ("one-group.sif", "empty.sif"):      # two-groups.sif: 296 KiB
        path = os.path.join(SIF_IMAGES, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                out.append(f.read())
    squash = _squashfs_images()
    if out and squash:
        from minictr.image import sif

        data = out[0]
        parts = sif.partitions(lambda at, n: data[at:at + n], len(data))
        root = sif.root_partition(parts)
        # the same SIF with our squashfs as its root partition's data (descriptor size kept:
        # the reader checks the magic at the offset, then reads within the file)
        out.append(data[:root.offset] + squash[0])
    return out


ENV_FILES = [b"# comment\nA=1\nB=two words\n\nHOME\n  C==x\n",
             "\ufeffUNICODE=\u00e9\u00e8\nEMPTY=\nX=a=b\r\n".encode()]
UNITS = [b"512m", b"2g\n-1", b"1.5GiB\n3g", b"0-3,6", b"0.5", b"1e-3", b"7 kb", b"64\n32"]


def seeds(name: str) -> list[bytes]:
    table = {
        "tar": _tars, "layer": _tars, "manifest": _manifests, "image_config": _configs,
        "reference": lambda: [r.encode() for r in REFERENCES],
        "docker_archive": _docker_manifest_json, "oci_layout": _oci_indexes,
        "www_authenticate": lambda: [c.encode() for c in CHALLENGES],
        "ldcache": _ldcaches, "elf": _elfs, "cdi": _cdi_specs,
        "env_file": lambda: list(ENV_FILES), "units": lambda: list(UNITS),
        "squashfs": _squashfs_images, "sif": _sif_images,
    }
    return table[name]()


def write_corpus(name: str, directory: str) -> int:
    """Write target ``name``'s seeds into ``directory``, one file each; return how many."""
    os.makedirs(directory, exist_ok=True)
    found = seeds(name)
    for data in found:
        with open(os.path.join(directory, hashlib.sha1(data).hexdigest()), "wb") as out:
            out.write(data)
    return len(found)
