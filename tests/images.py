"""Test images, built once and cached by content (for every tier's fixtures).

    from tests.images import build_busybox, write_archives
    image = build_busybox(cache_dir)    # a BuiltImage: image.ref == "oci:/.../busybox-KEY:latest"
    oci_tar, docker_tar = write_archives(image, out_dir, "example.test/busybox:latest")

Each image is an OCI layout directory named after a hash of everything that goes into it (the
rootfs_tools sources, the host files copied in, the build options), so a changed input makes a
new entry and an unchanged one is reused. A layout is built in a temp directory inside
``cache_dir`` and renamed into place: parallel test processes (pytest-xdist, two tiers at once)
either see a complete layout or none, and the loser of a race throws its copy away.

A host tool that is missing (busybox-static, gcc) makes the calling test *skip* with the reason.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

import rootfs_tools
from rootfs_tools import ToolMissing, build, elf, oci, rootfs

TAG = "latest"
GLIBC_BINARIES = ("/bin/sh", "/bin/cat", "/usr/bin/env", "/sbin/ldconfig")
_SOURCES = Path(rootfs_tools.__file__).parent


@dataclass(frozen=True)
class BuiltImage:
    """An OCI layout holding one image under ``tag``; ``ref`` is what ``minictr run`` takes."""

    path: Path
    tag: str = TAG

    @property
    def ref(self) -> str:
        return f"oci:{self.path}:{self.tag}"

    def __fspath__(self) -> str:
        return str(self.path)


def _hash_files(h, paths: Iterable[str | os.PathLike]) -> None:
    for path in paths:
        h.update(os.fsencode(path) + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)


def _key(name: str, inputs: Iterable[str | os.PathLike], extra: str = "") -> str:
    """sha256 of the builder's name and options, rootfs_tools' own sources and the inputs."""
    h = hashlib.sha256(f"{name}\0{extra}\0".encode())
    _hash_files(h, sorted(p for p in _SOURCES.iterdir() if p.suffix in (".py", ".c", ".sh")))
    _hash_files(h, inputs)
    return h.hexdigest()[:16]


def cached(cache_dir: str | os.PathLike, name: str, key: str,
           make: Callable[[str], None]) -> Path:
    """Return ``cache_dir/NAME-KEY``, calling ``make(temp_dir)`` to fill it if it is absent; the
    directory appears only complete (rename(2) of a directory is atomic)."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{name}-{key}"
    if final.exists():
        return final
    tmp = tempfile.mkdtemp(dir=cache, prefix=f".{name}-")
    try:
        os.chmod(tmp, 0o755)      # rootless tiers read the cache as another user
        make(tmp)
        try:
            os.rename(tmp, final)
        except OSError as err:
            # another process renamed its copy first: ENOTEMPTY (or EEXIST) for a non-empty dir
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return final


def _skip_if_missing(build_fn: Callable[[], Path]) -> Path:
    try:
        return build_fn()
    except ToolMissing as err:
        pytest.skip(f"{err}" + (f" ({err.hint})" if err.hint else ""))


def _compiler_inputs() -> list[str]:
    """What a static probe build depends on besides probe.c: the C library archive."""
    return [p for p in ("/usr/lib/x86_64-linux-gnu/libc.a", "/usr/lib/aarch64-linux-gnu/libc.a")
            if os.path.exists(p)]


def build_busybox(cache_dir: str | os.PathLike) -> BuiltImage:
    """busybox-static with its applets, /etc/passwd (root, app uid 1000, nobody), /tmp 1777;
    Cmd ["sh"]. No /proc, /sys or /dev: the runtime must make them."""
    def go() -> Path:
        key = _key("busybox", [rootfs.find_busybox()])
        return cached(cache_dir, "busybox", key, lambda d: build.busybox(d, tag=TAG))
    return BuiltImage(_skip_if_missing(go))


def build_probe_image(cache_dir: str | os.PathLike) -> BuiltImage:
    """busybox plus /probe (see rootfs_tools/probe.c); Cmd ["/probe"]."""
    def go() -> Path:
        if not shutil.which("gcc"):
            raise ToolMissing("gcc not found", hint="apt-get install gcc libc6-dev")
        key = _key("probe", [rootfs.find_busybox(), *_compiler_inputs()])
        return cached(cache_dir, "probe", key, lambda d: build.probe(d, tag=TAG))
    return BuiltImage(_skip_if_missing(go))


def build_demo_image(cache_dir: str | os.PathLike) -> BuiltImage:
    """The image ``make run`` starts: busybox plus /demo.sh; Cmd ["/demo.sh"]."""
    def go() -> Path:
        key = _key("demo", [rootfs.find_busybox()])
        return cached(cache_dir, "demo", key, lambda d: build.demo(d, tag=TAG))
    return BuiltImage(_skip_if_missing(go))


def build_glibc_image(cache_dir: str | os.PathLike,
                      binaries: Iterable[str] = GLIBC_BINARIES) -> BuiltImage:
    """Host binaries (default /bin/sh, /bin/cat, /usr/bin/env, /sbin/ldconfig) with the loader and
    every library they load, at the host's paths (/usr/lib/x86_64-linux-gnu on Debian, with the
    merged-/usr symlinks), plus /etc/ld.so.conf*. No /etc/ld.so.cache: the loader falls back to its
    default directories, and GPU injection writes its own cache."""
    binaries = list(binaries)

    def go() -> Path:
        found = [b for b in binaries if os.path.exists(b)]
        if len(found) != len(binaries):
            raise ToolMissing(f"host binaries missing: {sorted(set(binaries) - set(found))}")
        elfs = [b for b in found if rootfs.is_elf(b)]
        files = [os.path.realpath(p) for p in found + elf.dependencies(elfs)]
        key = _key("glibc", files, extra=" ".join(binaries))
        return cached(cache_dir, "glibc", key, lambda d: build.host_binaries(d, binaries, tag=TAG))
    return BuiltImage(_skip_if_missing(go))


def build_probe_binary(cache_dir: str | os.PathLike) -> Path:
    """Just the static probe executable (for bundles and host-side comparisons)."""
    def go() -> Path:
        key = _key("probe-bin", _compiler_inputs())
        directory = cached(cache_dir, "probe-bin", key,
                           lambda d: rootfs.compile_probe(os.path.join(d, "probe")))
        return directory / "probe"
    return _skip_if_missing(go)


def write_archives(image: BuiltImage, out_dir: str | os.PathLike,
                   repo_tag: str) -> tuple[Path, Path]:
    """``image`` as an oci-archive (``ctr images import --base-name``) and as a classic
    docker-archive named ``repo_tag`` (``docker load`` of Docker < 25, ``podman load``), written
    into ``out_dir``; returns (oci_archive, docker_archive)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    oci_tar, docker_tar = out / f"{image.path.name}.oci.tar", out / f"{image.path.name}.docker.tar"
    oci.write_archive(str(image.path), str(oci_tar))
    oci.write_docker_archive(str(image.path), str(docker_tar), [repo_tag], tag=image.tag)
    return oci_tar, docker_tar


# ---------------------------------------------------------------- single-file images

SIF_SOURCES = "/usr/share/gocode/src/github.com/sylabs/sif"
# Debian's golang-github-sylabs-sif-dev ships the reference implementation's packages, siftool's
# commands (pkg/siftool) among them, but no main package: this is upstream's cmd/siftool, cut
# down to what the tests use.
SIFTOOL_MAIN = """\
package main

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/sylabs/sif/v2/pkg/siftool"
)

func main() {
	root := &cobra.Command{Use: "siftool"}
	if err := siftool.AddCommands(root); err != nil {
		os.Exit(2)
	}
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}
"""


def build_siftool(cache_dir: str | os.PathLike) -> Path:
    """siftool, built with Debian's Go (GOPATH mode, no network) from the reference sources;
    skips the calling test when Go or the sources are missing."""
    def go() -> Path:
        gotool = shutil.which("go")
        if gotool is None or not os.path.isdir(SIF_SOURCES):
            raise ToolMissing("building siftool needs Go and the SIF sources",
                              hint="apt-get install golang-go golang-github-sylabs-sif-dev")
        inputs = [os.path.join(SIF_SOURCES, "go.mod"),
                  os.path.join(SIF_SOURCES, "pkg", "siftool", "siftool.go"), gotool]
        key = _key("siftool", inputs, extra=SIFTOOL_MAIN)

        def make(d: str) -> None:
            import subprocess

            gopath = os.path.join(d, "gopath")
            link = os.path.join(gopath, "src", "github.com", "sylabs", "sif", "v2")
            os.makedirs(os.path.dirname(link))
            os.symlink(SIF_SOURCES, link)
            main = os.path.join(gopath, "src", "siftool")
            os.makedirs(main)
            with open(os.path.join(main, "main.go"), "w") as f:
                f.write(SIFTOOL_MAIN)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": d,
                   "GO111MODULE": "off", "GOPATH": f"{gopath}:/usr/share/gocode",
                   "GOCACHE": os.path.join(d, "gocache"), "GOFLAGS": "", "CGO_ENABLED": "0"}
            res = subprocess.run([gotool, "build", "-o", os.path.join(d, "siftool"), "."],
                                 cwd=main, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"go build siftool failed:\n{res.stderr[-3000:]}")
            shutil.rmtree(os.path.join(d, "gocache"), ignore_errors=True)
        return cached(cache_dir, "siftool", key, make) / "siftool"
    return _skip_if_missing(go)


def make_sif(siftool: str | os.PathLike, squashfs: str, out: str) -> str:
    """A SIF holding ``squashfs`` as its primary system partition, made by siftool (the
    reference implementation): `siftool new` + `siftool add --parttype 2 (PrimSys)`."""
    import platform
    import subprocess

    arch = {"x86_64": "2", "aarch64": "4"}.get(platform.machine(), "2")
    subprocess.run([str(siftool), "new", out], check=True, capture_output=True)
    subprocess.run([str(siftool), "add", "--datatype", "4", "--parttype", "2", "--partfs", "1",
                    "--partarch", arch, out, squashfs], check=True, capture_output=True)
    return out
