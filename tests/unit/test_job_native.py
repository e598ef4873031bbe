"""Job-native mode (--hpc): the plan (spec/native.py, the builder), the site configuration,
Slurm's PMI/PMIx pieces (hpc/slurm.py) and the runtime steps it adds (nested user namespace,
PMI fd kept by number)."""
from __future__ import annotations

import os

import pytest

from minictr import settings
from minictr.errors import MinictrError, SpecError, UsageError
from minictr.hpc import slurm
from minictr.runtime import container, idmap
from minictr.runtime import syscalls as sc
from minictr.spec import native
from minictr.spec.builder import HostFacts, build_spec
from minictr.spec.options import RunOptions

CID = "0123456789abcdef0123456789abcdef"
IMAGE = {"config": {"Cmd": ["sh"], "Env": ["PATH=/opt/app/bin:/usr/bin", "APP=1"],
                    "WorkingDir": "/srv"}}
FILES = {"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"}
HOST_ENV = {"PATH": "/host/bin", "LD_LIBRARY_PATH": "/host/lib", "HOME": "/home/alice",
            "USER": "alice", "SLURM_JOB_ID": "42", "SLURM_PROCID": "1", "PMI_FD": "7",
            "PMIX_RANK": "1", "OMP_NUM_THREADS": "4", "BASH_FUNC_module%%": "() { :; }",
            "MINICTR_ROOT": "/x", "APP": "from-host"}
DIRS = {"/home/alice", "/home/alice/proj", "/scratch/run1", "/dev/shm", "/proc", "/tmp"}


def host_stat(path):
    if path in DIRS:
        return os.stat_result((0o40755, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    raise FileNotFoundError(2, "No such file", path)


def build(*, rootless=True, cwd="/scratch/run1", **kw):
    kw.setdefault("image", "img")
    kw.setdefault("hpc", True)
    maps = ([{"containerID": 1000, "hostID": 1000, "size": 1}],
            [{"containerID": 1000, "hostID": 1000, "size": 1}]) if rootless else (None, None)
    return build_spec(IMAGE, RunOptions(**kw), rootless=rootless, container_id=CID,
                      rootfs_path="/run/r", read_file=FILES.get, host_env=dict(HOST_ENV),
                      host_stat=host_stat, host_ids=(1000, 1000), uid_mappings=maps[0],
                      gid_mappings=maps[1],
                      host=HostFacts(cwd=cwd, home="/home/alice", hostname="node7",
                                     groups=(1000, 2000)))


def env_of(spec):
    return dict(e.split("=", 1) for e in spec["process"]["env"])


def test_the_host_environment_passes_except_what_breaks_the_image():
    env = env_of(build())
    assert env["SLURM_JOB_ID"] == "42" and env["PMI_FD"] == "7" and env["PMIX_RANK"] == "1"
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["PATH"] == "/opt/app/bin:/usr/bin"            # the image's, not the host's
    assert "LD_LIBRARY_PATH" not in env and "MINICTR_ROOT" not in env
    assert not [k for k in env if k.startswith("BASH_FUNC_")]
    assert env["APP"] == "1"                                  # the image's Env wins over the host's
    assert env["HOME"] == "/home/alice" and env["USER"] == "alice"   # yours over the image's
    assert env["HOSTNAME"] == "node7"
    assert env_of(build(env=("APP=cli",)))["APP"] == "cli"    # -e wins over both


def test_you_are_yourself_in_the_cwd_with_home_and_cwd_mounted():
    spec = build()
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert spec["process"]["capabilities"]["effective"] == []
    assert spec["process"]["cwd"] == "/scratch/run1"
    assert spec["linux"]["uidMappings"] == [{"containerID": 1000, "hostID": 1000, "size": 1}]
    binds = {m["destination"]: m for m in spec["mounts"] if m.get("type") == "bind"}
    assert binds["/home/alice"]["source"] == "/home/alice"
    assert binds["/scratch/run1"]["options"] == ["rbind", "rslave"]
    assert build(workdir="/srv")["process"]["cwd"] == "/srv"


def test_cwd_inside_home_or_a_system_dir_is_not_mounted_again():
    for cwd in ("/home/alice/proj", "/usr/share", "/"):
        dests = [m["destination"] for m in build(cwd=cwd)["mounts"]]
        assert cwd not in dests or cwd == "/home/alice"
        assert "/home/alice" in dests


def test_no_pid_ipc_uts_or_network_namespace_and_the_hosts_proc_and_shm():
    spec = build()
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["user", "mount", "cgroup"]
    assert "hostname" not in spec
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/proc"]["type"] == "bind" and mounts["/proc"]["source"] == "/proc"
    assert mounts["/dev/shm"]["source"] == "/dev/shm"
    assert "/dev/mqueue" not in mounts                        # the host (here) has none
    assert [n["type"] for n in build(network="none")["linux"]["namespaces"]] == [
        "user", "network", "mount", "cgroup"]
    root = build(rootless=False)
    assert [n["type"] for n in root["linux"]["namespaces"]] == ["mount", "cgroup"]
    assert root["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [2000]}


def test_options_that_contradict_job_native_mode_are_errors():
    for kw in ({"user": "0"}, {"hostname": "x"}):
        with pytest.raises(SpecError) as err:
            build(**kw)
        assert "--hpc" in str(err.value) and "--no-hpc" in err.value.hint


def test_passwd_and_group_carry_the_user():
    passwd = native.passwd_with(b"root:x:0:0::/root:/bin/sh\nold:x:1000:1000::/h:/bin/sh\n",
                                "alice", 1000, 1000, "Alice", "/home/alice", "/bin/bash")
    assert passwd.decode().splitlines() == ["root:x:0:0::/root:/bin/sh",
                                            "alice:x:1000:1000:Alice:/home/alice:/bin/bash"]
    group = native.group_with(b"root:x:0:\nvideo:x:44:bob\n", [("alice", 1000), ("vid", 44)],
                              "alice")
    assert group.decode().splitlines() == ["root:x:0:", "video:x:44:bob,alice",
                                           "alice:x:1000:alice"]
    forged = native.passwd_with(None, "a:0:0\nroot", 1, 1, "", "/", "/bin/sh").decode()
    assert forged.count("\n") == 1 and len(forged.split(":")) == 7     # no field or line added


# ---------------------------------------------------------------- site configuration


def test_config_files_user_overrides_site(tmp_path):
    site, user = tmp_path / "site.toml", tmp_path / "user" / "minictr" / "config.toml"
    user.parent.mkdir(parents=True)
    site.write_text("[run]\nhpc = true\n")
    user.write_text("[run]\nhpc = false\n")
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "user")}
    assert settings.files(env)[1] == str(user)
    assert settings.load("run", paths=[str(site), str(user)])["hpc"] is False
    assert settings.load("run", {"MINICTR_CONFIG": str(site)})["hpc"] is True
    assert settings.load("run", {"MINICTR_CONFIG": ""})["hpc"] is False
    with pytest.raises(UsageError, match="no such file"):
        settings.load("run", {"MINICTR_CONFIG": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize("text, words", [("[run]\nhpc = 1\n", "must be a bool"),
                                         ("[run]\nhcp = true\n", "unknown key 'hcp'"),
                                         ("[gpu]\nx = 1\n", r"unknown table \[gpu\]"),
                                         ("[run\n", "not valid TOML")])
def test_bad_config_is_an_error_naming_the_file(tmp_path, text, words):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match=words):
        settings.load("run", {"MINICTR_CONFIG": str(f)})


# ---------------------------------------------------------------- Slurm PMI / PMIx


def test_pmix_mca_names_and_the_server_tmpdir():
    env = {"PMIX_PTL_MODULE": "tcp,usock", "PMIX_SECURITY_MODE": "native",
           "PMIX_GDS_MODULE": "ds21,hash", "PMIX_MCA_gds": "hash",
           "PMIX_SERVER_TMPDIR": "/var/spool/slurm/pmix.42.0"}
    edits = slurm.pmix_edits(env, lambda p: p == "/var/spool/slurm/pmix.42.0")
    assert edits.env == ("PMIX_MCA_ptl=tcp,usock", "PMIX_MCA_psec=native")   # gds already set
    assert [(m.container_path, m.host_path) for m in edits.mounts] == [
        ("/var/spool/slurm/pmix.42.0", "/var/spool/slurm/pmix.42.0")]
    assert slurm.pmix_edits({}, lambda p: True) is None


def test_pmi_fd():
    assert slurm.pmi_fd({"PMI_FD": "7"}, lambda fd: True) == 7
    assert slurm.pmi_fd({"PMI_FD": "7"}, lambda fd: False) is None
    assert slurm.pmi_fd({}, lambda fd: True) is None
    with pytest.raises(MinictrError, match="not a file descriptor"):
        slurm.pmi_fd({"PMI_FD": "x"}, lambda fd: True)


def test_the_pmi_fd_is_left_out_of_close_range():
    kernel = sc.RecordingSyscalls()
    lines = []
    container.close_fds(kernel, 3, lines.append, (7,))
    assert kernel.calls == [("close_range", 3, 6, sc.CLOSE_RANGE_CLOEXEC),
                            ("set_inheritable", 7),
                            ("close_range", 8, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)]
    assert lines == ["close_range(3, ~0, CLOSE_RANGE_CLOEXEC) except fds 7"]
    kernel = sc.RecordingSyscalls()
    container.close_fds(kernel, 5, None, (4,))                 # already preserved
    assert kernel.calls == [("close_range", 5, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)]


# ---------------------------------------------------------------- keep-id, set up as root


def test_keep_id_single_map_is_set_up_as_root_then_nested():
    one = [{"containerID": 1000, "hostID": 1000, "size": 1}]
    uid, gid, nest = idmap.setup_mappings(one, one)
    assert uid == gid == [{"containerID": 0, "hostID": 1000, "size": 1}] and nest == (1000, 1000)
    root = [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert idmap.setup_mappings(root, root) == (root, root, None)
    ranges = [{"containerID": 0, "hostID": 1000, "size": 1},
              {"containerID": 1, "hostID": 100000, "size": 65536}]
    assert idmap.setup_mappings(ranges, ranges)[2] is None
    kernel = sc.RecordingSyscalls()
    idmap.nest_user_namespace(kernel, 1000, 1000, None)
    assert kernel.calls == [("unshare", sc.CLONE_NEWUSER),
                            ("write_file", "/proc/self/setgroups", "deny\n"),
                            ("write_file", "/proc/self/uid_map", "1000 0 1\n"),
                            ("write_file", "/proc/self/gid_map", "1000 0 1\n")]
