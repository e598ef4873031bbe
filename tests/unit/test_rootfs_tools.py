"""rootfs_tools writes valid OCI layouts, and the images the other tiers use hold what they claim.

Layouts are checked the way a reader must (image-spec): index.json -> manifest -> config and
layers, every digest recomputed, every DiffID recomputed from the decompressed tar. skopeo and
umoci, when installed, are asked to read the same layouts.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

from rootfs_tools import ToolError, ToolMissing, build, debootstrap, elf, oci, rootfs
from rootfs_tools import __main__ as cli
from rootfs_tools.tarball import Normalize, TarBuilder
from tests import images


# ------------------------------------------------------------------ helpers

def _blob(layout, digest: str) -> bytes:
    algo, hexd = digest.split(":")
    data = (layout / "blobs" / algo / hexd).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexd, f"blob {digest} does not match its name"
    return data


def _decompress(media_type: str, data: bytes) -> bytes:
    if media_type.endswith("+gzip"):
        return gzip.decompress(data)
    if media_type.endswith("+zstd"):
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def verify_layout(layout, tag: str = "latest") -> tuple[dict, dict, list[bytes]]:
    """Walk index -> manifest -> config/layers verifying digests, sizes and DiffIDs; return the
    manifest, the config and each layer's uncompressed tar."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    [entry] = [m for m in index["manifests"]
               if m.get("annotations", {}).get(oci.REF_NAME) == tag]
    raw = _blob(layout, entry["digest"])
    assert len(raw) == entry["size"]
    manifest = json.loads(raw)
    assert manifest["mediaType"] == entry["mediaType"] == oci.MEDIA_MANIFEST
    config_raw = _blob(layout, manifest["config"]["digest"])
    assert len(config_raw) == manifest["config"]["size"]
    config = json.loads(config_raw)
    assert config["os"] == "linux" and config["architecture"] == oci.host_architecture()
    tars = []
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        data = _blob(layout, desc["digest"])
        assert len(data) == desc["size"]
        tar = _decompress(desc["mediaType"], data)
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
        tars.append(tar)
    return manifest, config, tars


def _members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name.rstrip("/"): m for m in tf.getmembers()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


# ------------------------------------------------------------------ layouts and layers

@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_from_dir_layout_verifies_and_keeps_links_owners_mtime(tmp_path, compression):
    tree = tmp_path / "tree"
    (tree / "b" / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("hello")
    os.link(tree / "a.txt", tree / "b" / "hard")
    os.symlink("../a.txt", tree / "b" / "soft")
    config = oci.ImageConfig(cmd=["/bin/sh"], entrypoint=["/init"], env=["A=1"],
                             working_dir="/w", user="1000:1000", labels={"k": "v"})
    norm = Normalize(owner=(0, 0), owners={"b/sub": (7, 8)}, mtime=1234)
    build.from_dir(str(tmp_path / "out"), str(tree), config, compression=compression, norm=norm)

    manifest, cfg, [tar] = verify_layout(tmp_path / "out")
    assert manifest["layers"][0]["mediaType"] == oci.MEDIA_LAYER[compression]
    assert cfg["config"] == {"Cmd": ["/bin/sh"], "Entrypoint": ["/init"], "Env": ["A=1"],
                             "WorkingDir": "/w", "User": "1000:1000", "Labels": {"k": "v"}}
    members = _members(tar)
    assert list(members) == ["a.txt", "b", "b/hard", "b/soft", "b/sub"]     # sorted walk
    assert members["b/hard"].islnk() and members["b/hard"].linkname == "a.txt"
    assert members["b/soft"].issym() and members["b/soft"].linkname == "../a.txt"
    assert (members["b/sub"].uid, members["b/sub"].gid) == (7, 8)
    assert all(m.mtime == 1234 and m.uname == "" for m in members.values())
    assert (members["a.txt"].uid, members["a.txt"].gid) == (0, 0)


def test_same_tree_gives_same_digests(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(os.urandom(1000))
    digests = {build.from_dir(str(tmp_path / f"out{i}"), str(tree), oci.ImageConfig(),
                              norm=Normalize(mtime=0)).digest for i in range(2)}
    assert len(digests) == 1


def test_tags_accumulate_and_retag_replaces(tmp_path):
    out = tmp_path / "out"
    layout = oci.Layout(str(out))
    one = layout.add_image([layout.add_layer_from_tar(TarBuilder().file("x", b"1"))],
                           oci.ImageConfig(), "one")
    layout.add_image([layout.add_layer_from_tar(TarBuilder().file("x", b"2"))],
                     oci.ImageConfig(), "two")
    layout.add_image([layout.add_layer_from_tar(TarBuilder().file("x", b"3"))],
                     oci.ImageConfig(), "two")
    tags = [m["annotations"][oci.REF_NAME] for m in oci.read_index(str(out))["manifests"]]
    assert sorted(tags) == ["one", "two"]
    assert verify_layout(out, "one")[0] == json.loads(_blob(out, one.digest))
    assert _members(verify_layout(out, "two")[2][0])["x"].size == 1


def test_whiteout_layer_holds_markers(tmp_path):
    out = tmp_path / "out"
    base = TarBuilder().dir("etc").file("etc/keep", b"k").file("etc/gone", b"g").dir("var") \
        .dir("var/cache").file("var/cache/old", b"o")
    top = TarBuilder().dir("etc").whiteout("etc/gone").dir("var").dir("var/cache") \
        .opaque("var/cache").file("var/cache/new", b"n")
    oci.write_image(str(out), [base.to_bytes(), top], oci.ImageConfig())
    _, _, [_, tar] = verify_layout(out)
    members = _members(tar)
    assert "etc/.wh.gone" in members and members["etc/.wh.gone"].size == 0
    assert "var/cache/.wh..wh..opq" in members
    assert "var/cache/new" in members


def test_add_whiteout_layer_writes_parents_once(tmp_path):
    layout = oci.Layout(str(tmp_path / "out"))
    blob = layout.add_whiteout_layer(deleted=["usr/share/man", "usr/share/info"],
                                     opaque=["usr/share/doc"], files={"etc/added": b"a"},
                                     compression="none")
    layout.add_image([blob], oci.ImageConfig(), "latest")
    _, _, [tar] = verify_layout(tmp_path / "out")
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = [m.name.rstrip("/") for m in tf.getmembers()]
    assert names == ["usr", "usr/share", "usr/share/doc", "usr/share/doc/.wh..wh..opq",
                     "usr/share/.wh.man", "usr/share/.wh.info", "etc", "etc/added"]


def test_tarbuilder_writes_hostile_names_verbatim():
    tar = TarBuilder().file("../escape", b"x").symlink("abs", "/etc/passwd") \
        .device("dev/nvidia0", "c", 195, 0).hardlink("h", "../escape").to_bytes()
    members = _members(tar)
    assert members["../escape"].isreg()
    assert members["abs"].linkname == "/etc/passwd"
    assert (members["dev/nvidia0"].devmajor, members["dev/nvidia0"].devminor) == (195, 0)
    assert members["h"].islnk()


def test_unknown_compression_is_refused(tmp_path):
    with pytest.raises(ToolError, match="unknown compression"):
        oci.write_image(str(tmp_path / "o"), [TarBuilder().to_bytes()], oci.ImageConfig(),
                        compression="bzip2")


def test_oci_archive_holds_the_layout(tmp_path):
    out = tmp_path / "out"
    oci.write_image(str(out), [TarBuilder().file("x", b"1")], oci.ImageConfig())
    oci.write_archive(str(out), str(tmp_path / "img.tar"))
    with tarfile.open(tmp_path / "img.tar") as tf:
        names = set(tf.getnames())
        # extraction filters arrived in 3.11.4: Debian 12 has 3.11.2 (the archive is ours)
        tf.extractall(tmp_path / "unpacked",
                      **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
    assert {"oci-layout", "index.json", "blobs/sha256"} <= names
    verify_layout(tmp_path / "unpacked")


def test_docker_archive_holds_config_layers_and_repo_tags(tmp_path):
    out = tmp_path / "out"
    oci.write_image(str(out), [TarBuilder().file("a", b"1"), TarBuilder().file("b", b"2")],
                    oci.ImageConfig(cmd=["sh"]), tag="v1")
    oci.write_docker_archive(str(out), str(tmp_path / "d.tar"), ["example.test/img:v1"], tag="v1")
    manifest, config, tars = verify_layout(out, "v1")
    with tarfile.open(tmp_path / "d.tar") as tf:
        [entry] = json.loads(tf.extractfile("manifest.json").read())
        assert entry["RepoTags"] == ["example.test/img:v1"]
        assert json.loads(tf.extractfile(entry["Config"]).read()) == config
        layers = [tf.extractfile(name).read() for name in entry["Layers"]]
    assert [_decompress(l["mediaType"], data) for l, data in zip(manifest["layers"], layers)] \
        == tars
    with pytest.raises(ToolError, match="0 manifests are tagged 'nope'"):
        oci.write_docker_archive(str(out), str(tmp_path / "x.tar"), [], tag="nope")


# ------------------------------------------------------------------ named images

def test_busybox_image(cache):
    image = images.build_busybox(cache)
    _, config, [tar] = verify_layout(image.path)
    assert config["config"]["Cmd"] == ["sh"]
    members = _members(tar)
    assert members["bin/sh"].islnk() and members["bin/sh"].linkname == "bin/busybox"
    assert members["bin/ls"].issym()
    assert stat.S_IMODE(members["tmp"].mode) == 0o1777
    assert members["home/app"].uid == 1000
    assert not {"proc", "sys", "dev"} & set(members)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        passwd = tf.extractfile("etc/passwd").read().decode()
    assert "app:x:1000:1000:" in passwd


def test_cache_reuses_and_survives_a_lost_race(tmp_path):
    calls = []

    def make(d):
        calls.append(d)
        (tmp_path / "c" / "x-k").mkdir()       # a rival finishes first (never an empty dir)
        (tmp_path / "c" / "x-k" / "theirs").touch()
        open(os.path.join(d, "mine"), "w").close()

    path = images.cached(tmp_path / "c", "x", "k", make)
    assert path == tmp_path / "c" / "x-k" and os.listdir(path) == ["theirs"]
    assert images.cached(tmp_path / "c", "x", "k", make) == path and len(calls) == 1
    assert os.listdir(tmp_path / "c") == ["x-k"]          # no temp dir left behind


def _resolve_in_tar(members: dict[str, tarfile.TarInfo], path: str) -> str:
    """Follow the image's own symlinks (lib64 -> usr/lib64 ...) as the kernel would inside it."""
    for _ in range(40):
        parts, rel = path.strip("/").split("/"), ""
        for i, part in enumerate(parts):
            rel = f"{rel}/{part}" if rel else part
            if members[rel].issym():
                path = os.path.normpath(os.path.join("/" + os.path.dirname(rel),
                                                     members[rel].linkname, *parts[i + 1:]))
                break
        else:
            return rel
    raise AssertionError(f"symlink loop at {path}")


def test_glibc_image_has_loader_and_libs_of_sh(cache):
    image = images.build_glibc_image(cache)
    _, config, [tar] = verify_layout(image.path)
    assert config["config"]["Cmd"] == ["/bin/sh"]
    members = _members(tar)
    needed = [elf.read_elf("/bin/sh").interp, *elf.dependencies(["/bin/sh"]), "/bin/sh"]
    for path in needed:
        assert members[_resolve_in_tar(members, path)].isreg(), path
    assert "etc/ld.so.conf" in members and "sbin" in members


@pytest.mark.skipif(not shutil.which("ldd"), reason="ldd not installed")
def test_elf_dependencies_match_ldd():
    for binary in ("/bin/sh", "/usr/bin/env", os.path.realpath(sys.executable)):
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        from_ldd = {os.path.realpath(w) for w in out.split() if w.startswith("/")}
        ours = {os.path.realpath(p) for p in elf.dependencies([binary])}
        assert ours == from_ldd, binary


def test_static_binary_has_no_interp(tmp_path):
    probe = images.build_probe_binary(tmp_path)
    info = elf.read_elf(str(probe))
    assert info.interp is None and info.needed == ()


def test_probe_runs_on_host_and_prints_json(tmp_path):
    probe = images.build_probe_binary(tmp_path)
    (tmp_path / "data").write_text("abc")
    proc = subprocess.Popen([str(probe), "--open", "/etc/passwd", "--open", str(tmp_path / "no"),
                             "--stat", str(tmp_path / "data"), "--write", str(tmp_path / "w"),
                             "--mknod", "bad-spec", "--exit", "3"], stdout=subprocess.PIPE)
    stdout, _ = proc.communicate()
    assert proc.returncode == 3
    doc = json.loads(stdout)
    assert (doc["uid"], doc["gid"], doc["pid"], doc["ppid"]) == \
        (os.getuid(), os.getgid(), proc.pid, os.getpid())
    assert doc["ns"]["mnt"] == os.stat("/proc/self/ns/mnt").st_ino
    assert set(doc["caps"]) >= {"CapEff", "CapBnd", "CapPrm"}
    assert doc["open"] == {"/etc/passwd": "ok", str(tmp_path / "no"): "ENOENT"}
    assert doc["stat"][str(tmp_path / "data")]["size"] == 3
    assert doc["write"] == {str(tmp_path / "w"): "ok"} and (tmp_path / "w").read_text() == "probe\n"
    assert doc["mknod"] == {"bad-spec": {"mknod": "EINVAL"}}
    assert doc["mounts"] > 0 and doc["pid"] in doc["pids"]
    assert {"0", "1", "2"} <= set(doc["fds"])
    only = json.loads(subprocess.run([str(probe), "--only", "ns"], capture_output=True,
                                     text=True, check=True).stdout)
    assert list(only) == ["ns"]


def test_probe_and_demo_images_share_the_busybox_layer(cache):
    probe_manifest, probe_cfg, [_, probe_tar] = verify_layout(images.build_probe_image(cache).path)
    demo_manifest, demo_cfg, [_, demo_tar] = verify_layout(images.build_demo_image(cache).path)
    assert probe_manifest["layers"][0] == demo_manifest["layers"][0]
    assert probe_cfg["config"]["Cmd"] == ["/probe"] and demo_cfg["config"]["Cmd"] == ["/demo.sh"]
    assert stat.S_IMODE(_members(probe_tar)["probe"].mode) == 0o755
    assert _members(demo_tar)["demo.sh"].mode & 0o111


# ------------------------------------------------------------------ debootstrap helpers

def test_find_mirror_reads_both_source_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://sec/ bookworm-security main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src/\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror/debian\nSuites: bookworm bookworm-updates\n")
    assert debootstrap.find_mirror("bookworm", str(tmp_path)) == "http://mirror/debian"
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://one/ bookworm main\n")
    assert debootstrap.find_mirror("bookworm", str(tmp_path)) == "http://one/"


def test_split_and_whiteout_layers_rebuild_the_tree(tmp_path):
    root = tmp_path / "root"
    for rel in ("usr/share/doc/pkg/README", "usr/share/man/man1/x.1", "usr/bin/tool",
                "etc/conf", "var/cache/debconf/c.dat"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 1000)
    groups = debootstrap.split_paths(str(root), 2)
    assert len(groups) == 2 and all(groups)
    everything = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert set().union(*groups) == everything
    for group in groups:
        for rel in group:
            parent = os.path.dirname(rel)
            assert not parent or group.index(parent) < group.index(rel), (rel, group)
    members = _members(debootstrap.whiteout_layer(str(root)).to_bytes())
    assert {"usr/share/doc/.wh..wh..opq", "var/cache/debconf/.wh..wh..opq",
            "usr/share/.wh.man", "etc/minictr-bench"} <= set(members)


# ------------------------------------------------------------------ the CLI and peer tools

def test_cli_from_dir_and_archive(tmp_path, capsys):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "hello").write_text("hi")
    rc = cli.main(["from-dir", str(tmp_path / "out"), str(tmp_path / "tree"), "--tag", "t1",
                   "--cmd", "/hello", "x", "--env", "K=V", "--archive", str(tmp_path / "a.tar")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ref"] == f"oci:{tmp_path / 'out'}:t1"
    _, config, _ = verify_layout(tmp_path / "out", "t1")
    assert config["config"]["Cmd"] == ["/hello", "x"] and "K=V" in config["config"]["Env"]
    assert tarfile.is_tarfile(tmp_path / "a.tar")


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert cli.main(["host-binaries", str(tmp_path / "o"), "/no/such/binary"]) == 1
    assert capsys.readouterr().err.startswith("rootfs_tools: error: host binary /no/such/binary")


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed")
def test_skopeo_reads_layout_and_archive(cache, tmp_path):
    image = images.build_probe_image(cache)
    out = subprocess.run(["skopeo", "inspect", image.ref], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["Layers"]) == 2
    oci.write_archive(str(image.path), str(tmp_path / "p.tar"))
    out = subprocess.run(["skopeo", "inspect", f"oci-archive:{tmp_path / 'p.tar'}:latest"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed")
def test_skopeo_reads_docker_archive(cache, tmp_path):
    image = images.build_probe_image(cache)
    oci.write_docker_archive(str(image.path), str(tmp_path / "d.tar"), ["example.test/probe:v2"])
    out = subprocess.run(["skopeo", "inspect", f"docker-archive:{tmp_path / 'd.tar'}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["Layers"]) == 2


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci not installed")
def test_umoci_unpacks_layout(cache, tmp_path):
    image = images.build_probe_image(cache)
    cmd = ["umoci", "raw", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    out = subprocess.run(cmd + ["--image", f"{image.path}:latest", str(tmp_path / "rootfs")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rootfs = tmp_path / "rootfs"
    assert os.path.samefile(rootfs / "bin" / "sh", rootfs / "bin" / "busybox")
    assert os.readlink(rootfs / "bin" / "ls") == "busybox"
    assert os.access(rootfs / "probe", os.X_OK)


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci not installed")
def test_umoci_applies_our_whiteouts(tmp_path):
    base = TarBuilder().dir("etc").file("etc/keep", b"k").file("etc/gone", b"g").dir("var") \
        .dir("var/cache").file("var/cache/old", b"o")
    top = TarBuilder().dir("etc").whiteout("etc/gone").dir("var").dir("var/cache") \
        .opaque("var/cache").file("var/cache/new", b"n")
    oci.write_image(str(tmp_path / "img"), [base, top], oci.ImageConfig())
    cmd = ["umoci", "raw", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"])
    out = subprocess.run(cmd + ["--image", f"{tmp_path / 'img'}:latest", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "r" / "etc")) == ["keep"]
    assert sorted(os.listdir(tmp_path / "r" / "var" / "cache")) == ["new"]


def test_demo_script_runs_under_busybox_without_errors(tmp_path):
    """demo.sh only uses busybox applets: run it with a PATH of nothing but busybox links."""
    try:
        busybox = rootfs.find_busybox()
    except ToolMissing as err:
        pytest.skip(str(err))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        os.symlink(busybox, tmp_path / applet)
    script = os.path.join(os.path.dirname(rootfs.__file__), "demo.sh")
    out = subprocess.run([busybox, "sh", script], capture_output=True, text=True,
                         env={"PATH": str(tmp_path)})
    assert (out.returncode, out.stderr) == (0, "")
    for heading in ("Who am I?", "Which processes?", "My namespaces", "CapEff decoded:"):
        assert heading in out.stdout
