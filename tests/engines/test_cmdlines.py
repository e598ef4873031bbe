"""How each engine calls its OCI runtime, recorded by runtime_spy in front of the runtime under
test: the command lines, working directory, descriptors and config.json a runc-compatible
runtime must accept. The engines decide these, so the checks hold for any runtime; they are the
interface minictr-runc implements (see README.md for a sample of each).

MINICTR_ENGINE_SPY_OUT=DIR keeps each test's record (calls.jsonl, configs/) under DIR/TEST.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid

import pytest

from engines_harness import IMAGE, run, run_in_pty

pytestmark = [pytest.mark.root, pytest.mark.engines]

GLOBALS_JSON = ("--root", "--log", "--log-format")       # go-runc's order, before the command
# podman passes --log-format=json --log only to runtimes whose basename it lists
PODMAN_SUPPORTS_JSON = {"crun", "runc", "kata", "runsc", "youki", "krun"}


@pytest.fixture(autouse=True)
def keep_record(request, spied):
    yield
    out = os.environ.get("MINICTR_ENGINE_SPY_OUT")
    if out:
        dest = os.path.join(out, re.sub(r"[^\w.-]+", "_", request.node.name))
        os.makedirs(dest, exist_ok=True)
        if os.path.exists(f"{spied.spy}.log"):
            shutil.copy(f"{spied.spy}.log", os.path.join(dest, "calls.jsonl"))
        if os.path.isdir(f"{spied.spy}.configs"):
            shutil.copytree(f"{spied.spy}.configs", os.path.join(dest, "configs"),
                            dirs_exist_ok=True)


def _split(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(global flags, command, the command's arguments) of a runtime command line."""
    commands = {"create", "start", "state", "kill", "delete", "exec", "run", "pause", "resume",
                "ps", "update", "events", "features", "list", "spec", "checkpoint", "restore"}
    i = next(i for i, a in enumerate(argv[1:], 1) if a in commands)
    return argv[1:i], argv[i], argv[i + 1:]


def _calls(rt) -> list[tuple[dict, list[str], str, list[str]]]:
    return [(c, *_split(c["argv"])) for c in rt.spy_calls()]


def _fd_numbers(call) -> set[int]:
    return {int(f.split("=", 1)[0]) for f in call["fds"]}


def test_docker_shim_command_lines(dockerd, spied):
    d = dockerd
    cid = d.docker("run", "-d", "--runtime", spied.docker_spy_name, "--network", "none", IMAGE,
                   "sleep", "100", check=True).stdout.strip()
    try:
        assert d.docker("exec", cid, "true").returncode == 0
        d.docker("kill", cid, check=True)
        d.docker("wait", cid)
    finally:
        d.docker("rm", "-f", cid)
    bundle = f"{d.containerd.dir}/state/io.containerd.runtime.v2.task/moby/{cid}"
    globals_ = ["--root", f"{d.exec_root}/runtime-runc/moby", "--log", f"{bundle}/log.json",
                "--log-format", "json"]
    calls = _calls(spied)
    assert [cmd for _, _, cmd, _ in calls][:2] == ["create", "start"], calls
    for call, flags, cmd, args in calls:
        assert call["parent"] == "containerd-shim"     # comm, cut at 15 bytes
        assert call["cwd"] == bundle
        assert flags == globals_, call
        assert {0, 1, 2} <= _fd_numbers(call)
    by_cmd = {}
    for call, _, cmd, args in calls:
        by_cmd.setdefault(cmd, []).append(args)
    assert by_cmd["create"] == [["--bundle", bundle, "--pid-file", f"{bundle}/init.pid", cid]]
    assert by_cmd["start"] == [[cid]]
    [exec_args] = by_cmd["exec"]
    assert exec_args[0] == "--process" and exec_args[1].startswith("/tmp/runc-process")
    assert exec_args[2:4] == ["--detach", "--pid-file"]
    assert re.fullmatch(re.escape(bundle) + r"/[0-9a-f]{64}\.pid", exec_args[4])
    assert exec_args[5:] == [cid]
    assert [cid, "9"] in by_cmd["kill"]                # signal as a number, after the ID
    assert [cid] in by_cmd["delete"]

    config = spied.spy_config(cid)
    [hook] = config["hooks"]["prestart"]               # libnetwork's, even with --network none
    assert re.fullmatch(r"/proc/\d+/exe", hook["path"])
    assert hook["args"][:2] == ["libnetwork-setkey", f"-exec-root={d.exec_root}"]
    assert [ns["type"] for ns in config["linux"]["namespaces"]] == \
        ["mount", "network", "uts", "pid", "ipc"]
    assert not any("path" in ns for ns in config["linux"]["namespaces"])
    assert config["linux"]["cgroupsPath"] == f"/{d.session.name}-docker/{cid}"
    assert config["root"]["path"].startswith(str(d.data_root))
    assert "terminal" not in config["process"] and "rlimits" not in config["process"]


def test_docker_terminal_and_shared_namespaces(dockerd, spied):
    d = dockerd
    res = run_in_pty(["docker", "run", "--rm", "-it", "--runtime", spied.docker_spy_name,
                      "--network", "host", IMAGE, "sh", "-c", "exit 0"], env=d.env)
    assert res.status == 0, res.output
    [(call, _, _, args)] = [c for c in _calls(spied) if c[2] == "create"]
    i = args.index("--console-socket")
    assert args[i + 1].startswith("/tmp/pty")          # the shim's socket, outside the bundle
    config = spied.spy_config(args[-1])
    assert config["process"]["terminal"] is True
    assert {"type": "network", "path": f"{d.exec_root}/netns/default"} in \
        config["linux"]["namespaces"]
    assert "hooks" not in config or not config["hooks"].get("prestart")

    spied.spy_reset()
    first = d.docker("run", "-d", "--runtime", spied.docker_name, "--network", "none", IMAGE,
                     "sleep", "100", check=True).stdout.strip()
    try:
        res = d.docker("run", "--rm", "--runtime", spied.docker_spy_name,
                       f"--pid=container:{first}", f"--network=container:{first}", IMAGE, "true")
        assert res.returncode == 0, res.stderr
        pid = d.docker("inspect", "-f", "{{.State.Pid}}", first).stdout.strip()
    finally:
        d.docker("rm", "-f", first)
    [(_, _, _, args)] = [c for c in _calls(spied) if c[2] == "create"]
    namespaces = spied.spy_config(args[-1])["linux"]["namespaces"]
    assert {"type": "pid", "path": f"/proc/{pid}/ns/pid"} in namespaces
    assert {"type": "network", "path": f"/proc/{pid}/ns/net"} in namespaces


def test_containerd_shim_command_lines(containerd, spied):
    c = containerd
    cid = f"spy-{uuid.uuid4().hex[:8]}"
    res = run(c.run_argv(spied, cid, "echo", "hi", flags=("--rm",), binary=str(spied.spy)))
    assert res.stdout == "hi\n", res.stderr
    bundle = f"{c.dir}/state/io.containerd.runtime.v2.task/{c.namespace}/{cid}"
    globals_ = ["--root", f"{c.runc_root(spied)}/{c.namespace}", "--log", f"{bundle}/log.json",
                "--log-format", "json"]
    calls = _calls(spied)
    assert [cmd for _, _, cmd, _ in calls] == ["create", "start", "delete", "delete"], calls
    for call, flags, _, _ in calls:
        assert flags == globals_ and call["cwd"] == bundle, call
    assert calls[0][3] == ["--bundle", bundle, "--pid-file", f"{bundle}/init.pid", cid]
    assert calls[1][3] == [cid] and calls[2][3] == [cid] and calls[3][3] == ["--force", cid]
    assert spied.spy_config(cid)["linux"]["cgroupsPath"] == f"/{c.namespace}/{cid}"


def test_conmon_and_podman_command_lines(podman, spied):
    p = podman
    cid = p("run", "-d", *p.run_flags(), IMAGE, "sleep", "100", runtime=str(spied.spy),
            check=True).stdout.strip()
    try:
        assert p("exec", cid, "true").returncode == 0
        p("kill", cid, check=True)
    finally:
        p("rm", "-f", cid)
    userdata = f"{p.dir}/root/overlay-containers/{cid}/userdata"
    pidfile = f"{p.dir}/runroot/overlay-containers/{cid}/userdata/pidfile"
    json_log = os.path.basename(spied.path) in PODMAN_SUPPORTS_JSON
    calls = _calls(spied)
    by_cmd = {}
    for call, flags, cmd, args in calls:
        by_cmd.setdefault(cmd, []).append((call, flags, args))
    [(call, flags, args)] = by_cmd["create"]
    assert call["parent"] == "conmon"
    oci_log = f"{p.dir}/runroot/overlay-containers/{cid}/userdata/oci-log"
    assert flags == (["--log-format=json", "--log", oci_log] if json_log else []), flags
    assert args == ["--bundle", userdata, "--pid-file", pidfile, cid]
    [(call, flags, args)] = by_cmd["start"]
    assert call["parent"] == "podman" and flags == [] and args == [cid]
    [(call, flags, args)] = by_cmd["exec"]
    assert call["parent"] == "conmon" and args[0] == "--pid-file" and args[2] == "--process"
    assert args[-2:] == ["--detach", cid]
    assert [(c["parent"], a) for c, _, a in by_cmd["kill"]] == [("podman", [cid, "9"])]
    # podman deletes without the global flags: the runtime's default --root must hold the state
    assert ([], ["--force", cid]) in [(f, a) for _, f, a in by_cmd["delete"]]
