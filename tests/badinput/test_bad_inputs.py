"""Bad input, table-driven, through the installed CLI (issue 13 item 4).

Each case is a command line that must fail the way the owner's rules say: the expected exit
code (125: minictr's own error), at most two lines on stderr (``minictr: error: ...`` and an
optional ``minictr: hint: ...``), never a traceback or an "internal error", nothing left behind
(the store's entries and temporaries, the state dir, the containers' writable layers, the
process's $TMPDIR, an auth file), and no hang: each command runs under a subprocess timeout,
a guard rather than a timing assertion.

The categories are those of the sweep that found 41 of 310 bad inputs mishandled: option
values (numbers, sizes, lists, paths, files), image references, image sources that lie
(sizes, digests, JSON, tar headers, symlinks), registries that drip, loop, lie or refuse
(hostile.py), container and global commands.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from tests import images
from tests.badinput import badfiles
from tests.badinput.hostile import HostileRegistry

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the case starts a "
                               "container)")


def case(id_, *args, code=125, says=None, registry=None, env=None, marks=()):
    """One row: argv after ``minictr``; ``says``: a phrase the error line must hold."""
    return pytest.param(list(args), code, says, registry, env or {}, id=id_, marks=marks)


RUN = ("run", "--rm")
CASES = [
    # ---------------------------------------------------------------- numbers and sizes
    case("cpus-nan", *RUN, "--cpus", "nan", "{img}", "true", says="--cpus nan"),
    case("cpus-inf", *RUN, "--cpus", "inf", "{img}", "true", says="--cpus inf"),
    case("cpus-huge", *RUN, "--cpus", "1e400", "{img}", "true", says="--cpus inf"),
    case("cpus-negative", *RUN, "--cpus", "-1", "{img}", "true", says="at least 0.01"),
    case("cpus-word", *RUN, "--cpus", "abc", "{img}", "true", says="invalid float"),
    case("memory-negative", *RUN, "--memory", "-1", "{img}", "true", says="invalid size"),
    case("memory-word", *RUN, "--memory", "lots", "{img}", "true", says="invalid size"),
    case("memory-overflow", *RUN, "--memory", "99999999999999999999999p", "{img}", "true",
         says="too large"),
    case("memory-tiny", *RUN, "--memory", "1k", "{img}", "true", says="6MB"),
    case("memory-two-dots", *RUN, "--memory", "1.5.5g", "{img}", "true", says="invalid size"),
    case("swap-alone", *RUN, "--memory-swap", "1g", "{img}", "true", says="needs --memory"),
    case("swap-below", *RUN, "-m", "1g", "--memory-swap", "512m", "{img}", "true",
         says="less than"),
    case("pids-word", *RUN, "--pids-limit", "abc", "{img}", "true", says="invalid int"),
    case("pids-negative", *RUN, "--pids-limit", "-5", "{img}", "true", says="--pids-limit"),
    case("pids-huge", *RUN, "--pids-limit", "99999999999999999999", "{img}", "true",
         says="4194304"),
    case("cpu-shares-low", *RUN, "--cpu-shares", "1", "{img}", "true", says="between"),
    case("cpu-weight-zero", *RUN, "--cpu-weight", "0", "{img}", "true", says="between"),
    case("cpuset-backwards", *RUN, "--cpuset-cpus", "3-1", "{img}", "true", says="cpu list"),
    case("cpuset-word", *RUN, "--cpuset-cpus", "a", "{img}", "true", says="cpu list"),
    case("cpuset-huge", *RUN, "--cpuset-cpus", "99999999999999999999", "{img}", "true",
         says="cpu list"),
    case("cpuset-not-ascii", *RUN, "--cpuset-cpus", "\u0661", "{img}", "true",
         says="cpu list"),
    case("ulimit-word", *RUN, "--ulimit", "nofile=abc", "{img}", "true", says="invalid value"),
    case("ulimit-superscript", *RUN, "--ulimit", "nofile=\u00b2", "{img}", "true",
         says="invalid value"),
    case("ulimit-huge", *RUN, "--ulimit", "nofile=99999999999999999999999", "{img}", "true",
         says="invalid value"),
    case("ulimit-unknown", *RUN, "--ulimit", "bogus=1", "{img}", "true", says="unknown limit"),
    case("ulimit-soft-above-hard", *RUN, "--ulimit", "nofile=2:1", "{img}", "true",
         says="above hard"),
    case("preserve-fds-negative", *RUN, "--preserve-fds", "-1", "{img}", "true",
         says="0 or more"),
    case("preserve-fds-closed", *RUN, "--preserve-fds", "1000000", "{img}", "true",
         says="not open"),
    # ---------------------------------------------------------------- names, users, paths
    case("cap-unknown", *RUN, "--cap-add", "FOO", "{img}", "true", says="unknown capability"),
    case("workdir-relative", *RUN, "-w", "rel", "{img}", "true", says="absolute"),
    case("workdir-dotdot", *RUN, "-w", "/a/../..", "{img}", "true", says=".."),
    case("user-unknown", *RUN, "-u", "nosuchuser", "{img}", "true", says="nosuchuser"),
    case("user-huge", *RUN, "-u", "99999999999999999999", "{img}", "true", says="range"),
    case("group-unknown", *RUN, "-u", "0:nosuchgroup", "{img}", "true", says="nosuchgroup"),
    case("hostname-space", *RUN, "--hostname", "bad name", "{img}", "true", says="host name"),
    case("hostname-long", *RUN, "--hostname", "x" * 100, "{img}", "true", says="host name"),
    case("env-no-name", *RUN, "-e", "=x", "{img}", "true", says="variable name"),
    case("env-space", *RUN, "-e", "A B=1", "{img}", "true", says="variable name"),
    case("name-slash", *RUN, "--name", "bad/name", "{img}", "true", says="bad/name"),
    case("annotation-no-equals", *RUN, "--annotation", "x", "{img}", "true", says="KEY=VALUE"),
    case("cgroup-parent-dotdot", *RUN, "--cgroup-parent", "../x", "{img}", "true", says=".."),
    case("userns-keep-id-as-root", *RUN, "--userns", "keep-id", "{img}", "true",
         says="rootless", marks=ROOT_ONLY),
    case("overlay-driver", *RUN, "{img}", "true", env={"MINICTR_OVERLAY": "bad"},
         says="MINICTR_OVERLAY"),
    case("no-command", *RUN, "--entrypoint", "", "{img}", says="no command"),
    # ---------------------------------------------------------------- host files
    case("env-file-urandom", *RUN, "--env-file", "/dev/urandom", "{img}", "true",
         says="not a regular file"),
    case("env-file-dir", *RUN, "--env-file", "/", "{img}", "true", says="directory"),
    case("env-file-missing", *RUN, "--env-file", "/nonexistent", "{img}", "true",
         says="No such file"),
    case("env-file-nul", *RUN, "--env-file", "{env-nul}", "{img}", "true", says="NUL"),
    case("env-file-not-utf8", *RUN, "--env-file", "{env-not-utf8}", "{img}", "true",
         says="UTF-8"),
    case("env-file-big", *RUN, "--env-file", "{env-big}", "{img}", "true", says="1 MiB"),
    case("env-file-no-name", *RUN, "--env-file", "{env-no-name}", "{img}", "true",
         says="no variable name"),
    case("seccomp-missing", *RUN, "--security-opt", "seccomp=/nonexistent", "{img}", "true",
         says="No such file"),
    case("seccomp-urandom", *RUN, "--security-opt", "seccomp=/dev/urandom", "{img}", "true",
         says="not a regular file"),
    case("seccomp-not-json", *RUN, "--security-opt", "seccomp={seccomp-not-json}", "{img}",
         "true", says="not valid JSON"),
    case("seccomp-deep", *RUN, "--security-opt", "seccomp={seccomp-deep}", "{img}", "true",
         says="nested too deeply"),
    case("seccomp-unknown-key", *RUN, "--security-opt", "seccomp={seccomp-unknown-key}",
         "{img}", "true", says="bogus"),
    case("seccomp-a-list", *RUN, "--security-opt", "seccomp={seccomp-list}", "{img}", "true"),
    case("security-opt-label", *RUN, "--security-opt", "label=x", "{img}", "true",
         says="not supported"),
    case("security-opt-unknown", *RUN, "--security-opt", "bogus", "{img}", "true",
         says="bogus"),
    # ---------------------------------------------------------------- mounts and devices
    case("mount-type", *RUN, "--mount", "type=foo,dst=/x", "{img}", "true", says="foo"),
    case("mount-no-dst", *RUN, "--mount", "type=bind,src=/tmp", "{img}", "true",
         says="destination"),
    case("volume-named", *RUN, "-v", "rel:/x", "{img}", "true", says="named volumes"),
    case("volume-relative-dst", *RUN, "-v", "/tmp:rel", "{img}", "true", says="absolute"),
    case("volume-dotdot", *RUN, "-v", "/tmp:/../x", "{img}", "true", says=".."),
    case("volume-missing-src", *RUN, "-v", "/nonexistent:/x", "{img}", "true",
         says="does not exist"),
    case("volume-option", *RUN, "-v", "/tmp:/x:zz", "{img}", "true", says="zz"),
    case("volume-empty", *RUN, "-v", ":", "{img}", "true"),
    case("tmpfs-relative", *RUN, "--tmpfs", "rel", "{img}", "true", says="absolute"),
    case("tmpfs-bad-size", *RUN, "--tmpfs", "/x:size=abc", "{img}", "true",
         marks=ROOT_ONLY),
    case("device-missing", *RUN, "--device", "/nonexistent", "{img}", "true",
         says="No such file"),
    case("device-not-a-device", *RUN, "--device", "/etc/passwd", "{img}", "true",
         says="not a device"),
    case("cdi-unknown", *RUN, "--device", "nvidia.com/gpu=0", "{img}", "true",
         says="CDI device"),
    case("cdi-bad-name", *RUN, "--device", "bad=name=x", "{img}", "true", says="CDI device"),
    case("gpus-garbage", *RUN, "--gpus", "garbage", "{img}", "true",
         env={"MINICTR_NVIDIA_PROC_ROOT": "/nonexistent"}),
    case("gpu-memory-superscript", *RUN, "--gpu-memory", "\u00b2=1G", "{img}", "true"),
    # ---------------------------------------------------------------- image references
    case("ref-empty", *RUN, "", "true", says="empty"),
    case("ref-space", *RUN, " ", "true", says="white space"),
    case("ref-colons", *RUN, "a:b:c:d", "true", says="invalid image reference"),
    case("ref-short-digest", *RUN, "x@sha256:short", "true", says="not a digest"),
    case("ref-long", *RUN, "a" * 300, "true", says="longer than"),
    case("ref-id-as-name", *RUN, "--pull", "never", "a" * 64, "true"),
    case("ref-absent", *RUN, "--pull", "never", "nosuch:img", "true", says="not in the store"),
    case("platform-bad", "pull", "--platform", "a/b/c/d", "127.0.0.1:1/x:y",
         says="invalid platform"),
    case("tag-bad", "load", "--tag", "BAD TAG", "{busybox-layout}", says="white space"),
    # ---------------------------------------------------------------- image sources that lie
    case("load-missing", "load", "/nonexistent", says="no such file"),
    case("load-not-a-layout", "load", "{dir}", says="not an OCI image layout"),
    case("load-urandom", "load", "/dev/urandom", says="not a readable tar"),
    case("load-zero", "load", "/dev/zero"),
    case("load-null", "load", "/dev/null", says="not a readable tar"),
    case("load-not-a-tar", "load", "{not-a-tar}", says="not a readable tar"),
    case("load-gzip", "load", "{archive-gz}", says="gzip-compressed"),
    case("load-oversize-layer", "load", "oci:{oci-oversize-layer}",
         says="larger than its descriptor's size (10 bytes)"),
    case("load-undersize-layer", "load", "oci:{oci-undersize-layer}", says="descriptor says"),
    case("load-missing-blob", "load", "oci:{oci-missing-blob}"),
    case("load-corrupt-layer", "load", "oci:{oci-corrupt-layer}"),
    case("load-negative-tar-size", "load", "oci:{oci-hanging-tar}", says="negative size"),
    case("load-layer-count", "load", "oci:{oci-layer-count}", says="diff_ids"),
    case("load-index-not-json", "load", "oci:{oci-index-not-json}", says="not valid JSON"),
    case("load-index-deep", "load", "oci:{oci-index-deep}", says="nested too deeply"),
    case("load-index-platform-int", "load", "oci:{oci-index-platform-int}",
         says="not a JSON object"),
    case("load-blob-symlink-out", "load", "oci:{oci-blob-symlink-out}", says="outside"),
    case("load-docker-repotags-list", "load", "{docker-repotags-list}",
         says="not a docker-archive manifest"),
    case("load-docker-layer-escape", "load", "{docker-layer-escape}",
         says="etc/passwd is missing from the archive"),        # kept inside the archive
    case("load-docker-no-config", "load", "{docker-no-config}",
         says="not a docker-archive manifest"),
    case("load-docker-bad-repotag", "load", "{docker-bad-repotag}",
         says="invalid image reference"),
    case("load-docker-deep", "load", "{docker-deep}", says="nested too deeply"),
    case("run-bad-image-config", *RUN, "badconfig:t", says="Env"),
    # ---------------------------------------------------------------- hostile registries
    case("pull-drip", "pull", "-q", "--tls-verify=false", "{host}/x/y:z", registry="drip",
         env={"MINICTR_PULL_TIMEOUT": "3"}, says="did not finish within 3 s"),
    case("pull-drip-headers", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="drip-headers", env={"MINICTR_PULL_TIMEOUT": "3"}, says="within 3 s"),
    case("pull-stall", "pull", "-q", "--tls-verify=false", "{host}/x/y:z", registry="stall",
         env={"MINICTR_PULL_TIMEOUT": "3"}, says="within 3 s"),
    case("pull-timeout-knob", "pull", "-q", "{host}/x/y:z", registry="stall",
         env={"MINICTR_PULL_TIMEOUT": "soon"}, says="MINICTR_PULL_TIMEOUT"),
    case("pull-redirect-loop", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="redirect-loop", says="redirects"),
    case("pull-short-body", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="short-body", says="broke"),
    case("pull-deep-json", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="deep-json", says="nested too deeply"),
    case("pull-huge-manifest", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="huge-manifest", says="larger than"),
    case("pull-not-json", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="not-json", says="not valid JSON"),
    case("pull-garbage-retry-after", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="garbage-retry-after", env={"MINICTR_PULL_TIMEOUT": "3"}),
    case("pull-bad-token", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="bad-token", says="no token"),
    case("pull-token-newline", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="token-newline", says="not printable"),
    case("pull-bad-challenge", "pull", "-q", "--tls-verify=false", "{host}/x/y:z",
         registry="bad-challenge"),
    case("pull-refused", "pull", "-q", "127.0.0.1:1/x:y", says="connection refused"),
    *[case(f"login-{mode}", "login", "--tls-verify=false", "-u", "u", "-p", "p",
           "--authfile", "{authfile}", "{host}", registry=mode,
           env={"MINICTR_PULL_TIMEOUT": "3"})
      for mode in ("401-no-challenge", "refuse-all", "basic-refuse", "403", "500", "bad-token",
                   "bad-challenge")],
    # ---------------------------------------------------------------- containers, globals
    # docker's codes (README "Exit codes"): inspect and rmi of a missing image exit 1
    case("inspect-absent", "inspect", "nosuch", code=1, says="not in the store"),
    case("rmi-absent", "rmi", "nosuch", code=1, says="not in the store"),
    case("exec-absent", "exec", "nosuch", "sh", says="does not exist"),
    case("exec-user-superscript", "exec", "-u", "\u00b2", "nosuch", "sh"),
    case("kill-absent", "kill", "nosuch", says="does not exist"),
    case("rm-absent", "rm", "nosuch", says="does not exist"),
    case("stats-absent", "stats", "nosuch", says="does not exist"),
    case("command-unknown", "nosuchcommand", says="invalid choice"),
    case("root-is-a-file", "images", "--root", "/etc/passwd", says="Not a directory"),
    case("cdi-format", "cdi", "generate", "--format", "xml", says="invalid choice"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, minictr_exe):
    base = tmp_path_factory.mktemp("badinput")
    files = base / "files"
    files.mkdir()
    paths = badfiles.make(str(files))
    busybox = images.build_busybox(str(base / "images"))
    paths.update({"dir": str(files), "busybox-layout": busybox.ref,
                  "authfile": str(base / "auth.json")})
    env = {**os.environ, "MINICTR_ROOT": str(base / "store"),
           "MINICTR_STATE": str(base / "state"), "TMPDIR": str(base / "tmp")}
    for key in [k for k in env if k.startswith(("MINICTR_NVIDIA", "REGISTRY_AUTH"))]:
        del env[key]
    os.makedirs(env["TMPDIR"])
    res = subprocess.run([minictr_exe, "load", "--tag", "bb:t", busybox.ref], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([minictr_exe, "load", "--tag", "badconfig:t",
                          f"oci:{paths['oci-bad-config']}:latest"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    paths["img"] = "bb:t"
    return {"exe": minictr_exe, "env": env, "paths": paths, "base": base}


def _snapshot(world) -> dict:
    """What a failed command must not change: every store entry, the state dir, the writable
    layers, $TMPDIR and the auth file."""
    env = world["env"]
    out = {}
    # made once and kept: the dirs for names and writable layers, the seccomp cache, locks
    infrastructure = {"names", "containers", ".cache", "locks"}
    for name, top in (("store", env["MINICTR_ROOT"]), ("state", env["MINICTR_STATE"]),
                      ("tmpdir", env["TMPDIR"])):
        found = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, top)
            if rel in (".cache", "locks") or rel.startswith("layers/"):
                dirnames[:] = []        # a layer dir is one entry
                continue
            found += [os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames
                      if not (rel == "." and n in infrastructure)]
        out[name] = sorted(found)
    tags = os.path.join(env["MINICTR_ROOT"], "images", "tags.json")
    out["tags"] = open(tags).read() if os.path.exists(tags) else None
    out["authfile"] = os.path.exists(world["paths"]["authfile"])
    return out


@pytest.mark.parametrize("argv,code,says,registry,extra_env", CASES)
def test_bad_input(world, argv, code, says, registry, extra_env):
    before = _snapshot(world)
    reg = HostileRegistry(registry) if registry else None
    fields = dict(world["paths"], host=reg.host if reg else "")
    argv = [a.format(**fields) if "{" in a else a for a in argv]
    try:
        if reg:
            reg.__enter__()
        res = subprocess.run([world["exe"], *argv], env={**world["env"], **extra_env},
                             capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    finally:
        if reg:
            reg.__exit__(None, None, None)
    lines = res.stderr.splitlines()
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert lines and lines[0].startswith("minictr: error: "), res.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("minictr: hint: ")), \
        res.stderr
    if says:
        assert says in lines[0], res.stderr
    assert _snapshot(world) == before
