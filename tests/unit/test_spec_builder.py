"""build_spec: image config + RunOptions -> the OCI runtime spec (minictr/spec/builder.py)."""
import json
import os

import pytest

from minictr.errors import SpecError
from minictr.spec import defaults
from minictr.spec.builder import build_spec, cgroups_path
from minictr.spec.options import RunOptions

CID = "0123456789abcdef0123456789abcdef"
IMAGE = {"architecture": "amd64", "os": "linux",
         "config": {"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx"],
                    "Env": ["PATH=/usr/sbin:/usr/bin", "NGINX_VERSION=1.25"],
                    "WorkingDir": "/srv", "User": "",
                    "Labels": {"org.opencontainers.image.version": "1.25",
                               "maintainer": "someone"}}}
FILES = {"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n"
                        b"alice:x:1000:1000::/home/alice:/bin/sh\n",
         "/etc/group": b"root:x:0:\nwww:x:33:\nvideo:x:44:alice,www\nusers:x:100:alice\n"}


# the default network outside a Slurm job drops CAP_NET_RAW (spec/builder.py,
# default_network_hardened)
HARDENED_CAPS = [c for c in defaults.DEFAULT_CAPABILITIES if c != "CAP_NET_RAW"]
LANDLOCK = {"org.minictr.landlock.scoped": "abstract_unix_socket"}


def host_stat(path):
    if path in ("/data", "/srv/cache"):
        return os.stat_result((0o40755, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    raise FileNotFoundError(2, "No such file or directory", path)


def build(image=IMAGE, *, rootless=False, files=FILES, host_env=None, launcher_caps=None,
          network_path=None, joined_hardened=False, **kw):
    kw.setdefault("image", "nginx")
    return build_spec(image, RunOptions(**kw), rootless=rootless, container_id=CID,
                      rootfs_path="/run/r", read_file=files.get, host_env=host_env or {},
                      host_stat=host_stat, read_host_file=lambda p: {"/env": b"FROMFILE=1\n"}[p],
                      host_ids=(1000, 1000), launcher_caps=launcher_caps,
                      network_path=network_path, joined_hardened=joined_hardened)


def test_whole_spec_for_a_plain_run():
    spec = build()
    assert spec["ociVersion"] == "1.0.2"
    assert spec["root"] == {"path": "/run/r", "readonly": False}
    assert spec["hostname"] == CID[:12]
    p = spec["process"]
    assert p["args"] == ["/docker-entrypoint.sh", "nginx"]
    assert p["env"] == ["PATH=/usr/sbin:/usr/bin", "NGINX_VERSION=1.25",
                        f"HOSTNAME={CID[:12]}", "HOME=/root"]
    assert p["cwd"] == "/srv" and p["terminal"] is False and p["noNewPrivileges"] is True
    assert p["user"] == {"uid": 0, "gid": 0}
    assert p["capabilities"]["bounding"] == HARDENED_CAPS
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]
    linux = spec["linux"]
    assert linux["namespaces"] == [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    assert "uidMappings" not in linux and "cgroupsPath" not in linux
    assert linux["maskedPaths"] == list(defaults.MASKED_PATHS)
    assert linux["readonlyPaths"] == list(defaults.READONLY_PATHS)
    assert spec["annotations"] == {"org.opencontainers.image.version": "1.25", **LANDLOCK}
    json.dumps(spec)        # plain JSON data, nothing else


def test_default_mounts_in_order_root():
    mounts = build()["mounts"]
    assert [m["destination"] for m in mounts] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    by = {m["destination"]: m for m in mounts}
    assert by["/proc"] == {"destination": "/proc", "type": "proc", "source": "proc",
                           "options": ["nosuid", "noexec", "nodev"]}
    assert by["/dev"]["options"] == ["nosuid", "strictatime", "mode=755", "size=65536k"]
    assert "gid=5" in by["/dev/pts"]["options"] and "newinstance" in by["/dev/pts"]["options"]
    assert by["/dev/shm"]["options"] == ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
    assert by["/sys"]["type"] == "sysfs" and "ro" in by["/sys"]["options"]
    assert by["/sys/fs/cgroup"]["type"] == "cgroup2" and "ro" in by["/sys/fs/cgroup"]["options"]


def test_default_mounts_rootless():
    by = {m["destination"]: m for m in build(rootless=True)["mounts"]}
    assert "gid=5" not in by["/dev/pts"]["options"]
    assert by["/sys"] == {"destination": "/sys", "type": "bind", "source": "/sys",
                          "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    assert "/sys/fs/cgroup" not in by              # the rbind of /sys carries it
    # with its own network namespace, a rootless container may mount a fresh sysfs, and then
    # gets the host's cgroup tree as a read-only rbind
    private = {m["destination"]: m for m in build(rootless=True, network="none")["mounts"]}
    assert private["/sys"]["type"] == "sysfs"
    assert private["/sys/fs/cgroup"] == {
        "destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup",
        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}


def test_default_devices_and_rules():
    linux = build()["linux"]
    assert linux["devices"] == [
        {"path": f"/dev/{n}", "type": "c", "major": a, "minor": b, "fileMode": 0o666,
         "uid": 0, "gid": 0}
        for n, a, b in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                        ("urandom", 1, 9), ("tty", 5, 0)]]
    rules = linux["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert rules[1:3] == [{"allow": True, "type": "c", "access": "m"},
                          {"allow": True, "type": "b", "access": "m"}]
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules
    assert rules[-2:] == [{"allow": True, "type": "c", "major": 136, "access": "rwm"},
                          {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"}]
    assert len(rules) == 11


def test_privileged():
    spec = build(privileged=True, user="alice")
    caps = spec["process"]["capabilities"]
    assert caps["bounding"] == list(defaults.ALL_CAPABILITIES)
    assert caps["effective"] == []                       # non-root still starts with none
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    by = {m["destination"]: m for m in spec["mounts"]}
    assert "ro" not in by["/sys"]["options"] and "ro" not in by["/sys/fs/cgroup"]["options"]
    root = build(privileged=True)["process"]["capabilities"]
    assert root["effective"] == root["permitted"] == list(defaults.ALL_CAPABILITIES)


def test_user_from_image_and_flag():
    image = {"config": {**IMAGE["config"], "User": "www"}}
    p = build(image)["process"]
    assert p["user"] == {"uid": 33, "gid": 33, "additionalGids": [44]}
    assert "HOME=/var/www" in p["env"]
    assert p["capabilities"]["effective"] == [] and p["capabilities"]["permitted"] == []
    assert p["capabilities"]["bounding"] == HARDENED_CAPS
    assert build(image, user="0")["process"]["user"] == {"uid": 0, "gid": 0}
    assert build(user="alice:video")["process"]["user"] == {"uid": 1000, "gid": 44}
    with pytest.raises(SpecError, match="unable to find user nobody: no matching entries"):
        build(user="nobody")


def test_terminal_env_and_hostname():
    spec = build(tty=True, hostname="box", env=("A=1", "HOST_ONLY"), env_files=("/env",),
                 host_env={"HOST_ONLY": "x"})
    assert spec["process"]["terminal"] is True and spec["hostname"] == "box"
    env = spec["process"]["env"]
    assert "HOSTNAME=box" in env and "TERM=xterm" in env
    assert env[-3:] == ["FROMFILE=1", "A=1", "HOST_ONLY=x"]


@pytest.mark.parametrize("hostname", ["-x", "a b", "x" * 65, "", "a_b"])
def test_bad_hostname(hostname):
    with pytest.raises(SpecError, match="not a valid host name"):
        build(hostname=hostname)


def test_read_only_root_and_workdir():
    spec = build(read_only=True, workdir="/tmp")
    assert spec["root"]["readonly"] is True and spec["process"]["cwd"] == "/tmp"


def test_user_mounts_after_defaults_and_replacing_them():
    spec = build(volumes=("/data:/data:ro",), tmpfs=("/dev/shm:size=1g",),
                 mounts=("type=bind,src=/srv/cache,dst=/sys/fs/cgroup/x",))
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                     "/sys/fs/cgroup", "/data", "/sys/fs/cgroup/x"]
    assert spec["mounts"][3]["type"] == "tmpfs" and "size=1g" in spec["mounts"][3]["options"]
    assert spec["mounts"][7]["options"] == ["rbind", "rprivate", "ro"]


def test_user_mount_parent_of_a_default_goes_before_it():
    dests = [m["destination"] for m in build(tmpfs=("/sys/fs",))["mounts"]]
    assert dests.index("/sys/fs") < dests.index("/sys/fs/cgroup")


@pytest.mark.parametrize("kw,match", [
    ({"volumes": ("/data:/proc",)}, "not allowed"),
    ({"volumes": ("/data:/",)}, "not allowed"),
    ({"volumes": ("/data:/../../x",)}, r"'\.\.'"),
    ({"volumes": ("vol:/x",)}, "named volumes"),
    ({"volumes": ("/missing:/x",)}, "does not exist"),
])
def test_user_mount_errors(kw, match):
    with pytest.raises(SpecError, match=match):
        build(**kw)


def test_network_none_adds_network_namespace():
    kinds = [n["type"] for n in build(network="none")["linux"]["namespaces"]]
    assert kinds == ["pid", "network", "ipc", "uts", "mount", "cgroup"]


def test_rootless_user_namespace_default_mapping():
    linux = build(rootless=True)["linux"]
    assert linux["namespaces"][0] == {"type": "user"}
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]


def test_rootless_given_mappings_are_used():
    uids = [{"containerID": 0, "hostID": 1000, "size": 1},
            {"containerID": 1, "hostID": 100000, "size": 65536}]
    spec = build_spec(IMAGE, RunOptions(image="x", user="alice"), rootless=True,
                      container_id=CID, rootfs_path="/r", read_file=FILES.get,
                      uid_mappings=uids, gid_mappings=uids, host_env={}, host_ids=(1000, 1000))
    assert spec["linux"]["uidMappings"] == uids and spec["linux"]["gidMappings"] == uids
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000,
                                       "additionalGids": [44, 100]}


def test_rootless_unmapped_user_is_an_error():
    with pytest.raises(SpecError, match="uid 1000 is not mapped") as err:
        build(rootless=True, user="alice")
    assert "/etc/subuid" in err.value.hint


def test_rootless_single_gid_map_drops_supplementary_groups():
    spec = build(rootless=True, user="root")
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}
    image = {"config": {"User": "www", "Cmd": ["x"]}}
    files = {**FILES, "/etc/group": b"root:x:0:root\nwheel:x:10:root\n"}
    assert build(image, rootless=True, user="0", files=files)["process"]["user"] == \
        {"uid": 0, "gid": 0}


def test_keep_id():
    spec = build(rootless=True, userns="keep-id")
    assert spec["linux"]["uidMappings"] == [{"containerID": 1000, "hostID": 1000, "size": 1}]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert "HOME=/home/alice" in spec["process"]["env"]
    assert spec["process"]["capabilities"]["effective"] == []


@pytest.mark.parametrize("rootless,userns,match", [
    (False, "keep-id", "only for rootless"), (True, "host", "needs root")])
def test_userns_errors(rootless, userns, match):
    with pytest.raises(SpecError, match=match):
        build(rootless=rootless, userns=userns)


def test_userns_host_as_root_means_none():
    assert "uidMappings" not in build(userns="host")["linux"]


@pytest.mark.parametrize("kw,expected", [
    ({}, {}),
    ({"memory": "512m"}, {"memory": {"limit": 536870912, "swap": 1073741824}}),
    ({"memory": "1g", "memory_swap": "-1"}, {"memory": {"limit": 1 << 30, "swap": -1}}),
    ({"memory": "1g", "memory_swap": "3g"}, {"memory": {"limit": 1 << 30, "swap": 3 << 30}}),
    ({"pids_limit": 100}, {"pids": {"limit": 100}}),
    ({"pids_limit": 0}, {"pids": {"limit": -1}}),
    ({"pids_limit": -1}, {"pids": {"limit": -1}}),
    ({"cpus": 1.5}, {"cpu": {"quota": 150000, "period": 100000}}),
    ({"cpu_shares": 512}, {"cpu": {"shares": 512}}),
    ({"cpuset_cpus": "0-3,6"}, {"cpu": {"cpus": "0-3,6"}}),
    ({"cpus": 0.5, "cpu_shares": 2, "cpuset_cpus": "1"},
     {"cpu": {"shares": 2, "quota": 50000, "period": 100000, "cpus": "1"}}),
    ({"cpu_weight": 200}, {"unified": {"cpu.weight": "200"}}),
])
def test_resources(kw, expected):
    res = build(**kw)["linux"]["resources"]
    assert {k: v for k, v in res.items() if k != "devices"} == expected


@pytest.mark.parametrize("kw,match", [
    ({"memory": "1x"}, "--memory"), ({"memory_swap": "1g"}, "--memory-swap needs --memory"),
    ({"pids_limit": -5}, "--pids-limit"), ({"cpus": 0.0}, "--cpus"),
    ({"cpu_shares": 1}, "--cpu-shares 1"), ({"cpu_weight": 0}, "--cpu-weight 0"),
    ({"cpu_weight": 10001}, "--cpu-weight"), ({"cpuset_cpus": "3-1"}, "--cpuset-cpus"),
    ({"cpu_weight": 100, "cpu_shares": 1024}, "--cpu-shares and --cpu-weight"),
    ({"cgroup_parent": "/a/../b"}, "--cgroup-parent"),
])
def test_resource_errors(kw, match):
    with pytest.raises(SpecError, match=match):
        build(**kw)


@pytest.mark.parametrize("parent,expected", [
    ("/batch", f"/batch/minictr-{CID}"), ("batch/jobs/", f"batch/jobs/minictr-{CID}"),
    ("/", f"/minictr-{CID}"),
])
def test_cgroups_path(parent, expected):
    assert cgroups_path(parent, CID) == expected
    assert build(cgroup_parent=parent)["linux"]["cgroupsPath"] == expected


def test_annotations():
    spec = build(annotations=("a=b", "org.opencontainers.image.version=override", "e="),
                 network="host")
    assert spec["annotations"] == {"org.opencontainers.image.version": "override", "a": "b",
                                   "e": "", "org.minictr.network": "host"}
    assert build({"config": {"Cmd": ["x"]}})["annotations"] == LANDLOCK
    with pytest.raises(SpecError, match="KEY=VALUE"):
        build(annotations=("novalue",))


def test_capabilities_flags_reach_the_spec():
    caps = build(cap_add=("net_admin",), cap_drop=("CAP_CHOWN",))["process"]["capabilities"]
    assert "CAP_NET_ADMIN" in caps["bounding"] and "CAP_CHOWN" not in caps["effective"]
    with pytest.raises(SpecError, match="unknown capability"):
        build(cap_add=("FLY",))


def test_ulimit_and_command_reach_the_spec():
    p = build(ulimits=("nofile=1024:2048",), command=("sh", "-c", "id"),
              entrypoint="")["process"]
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}]
    assert p["args"] == ["sh", "-c", "id"]
    with pytest.raises(SpecError, match="no command"):
        build({"config": {}})


def test_build_is_deterministic_and_does_not_share_defaults():
    a, b = build(), build()
    assert a == b
    a["linux"]["maskedPaths"].append("/x")
    a["mounts"][0]["options"].append("x")
    a["linux"]["resources"]["devices"].append({})
    assert build() == b


@pytest.mark.parametrize("config,match", [
    ({"Cmd": "sh -c id"}, "Cmd must be a list of strings"),
    ({"Entrypoint": ["/bin/sh", 3]}, "Entrypoint must be a list"),
    ({"Cmd": ["sh\0x"]}, "Cmd must be a list"),
    ({"Cmd": ["sh"], "Env": "A=1"}, "Env must be a list"),
    ({"Cmd": ["sh"], "WorkingDir": ["/"]}, "WorkingDir must be a string"),
    ({"Cmd": ["sh"], "User": 0}, "User must be a string"),
    ({"Cmd": ["sh"], "Labels": ["x"]}, "Labels must be an object"),
])
def test_malformed_image_config(config, match):
    with pytest.raises(SpecError, match=match):
        build({"config": config})
    with pytest.raises(SpecError, match="not an object"):
        build({"config": ["x"]})


def test_image_env_without_equals_is_dropped():
    env = build({"config": {"Cmd": ["sh"], "Env": ["JUNK", "A=1"]}})["process"]["env"]
    assert env[0] == "A=1" and not any(e == "JUNK" for e in env)


def test_env_file_read_from_the_host_by_default(tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("FROM_DISK=yes\n")
    opts = RunOptions(image="x", env_files=(str(env_file),))
    spec = build_spec({"config": {"Cmd": ["sh"]}}, opts, rootless=False,
                      container_id=CID, rootfs_path="/r", read_file=lambda p: None, host_env={})
    assert spec["process"]["env"][-1] == "FROM_DISK=yes"


def test_image_without_config_object_needs_a_command():
    with pytest.raises(SpecError, match="no command"):
        build({"architecture": "amd64"})
    assert build({}, command=("true",))["process"]["args"] == ["true"]


def test_namespaces_shared_with_the_host_and_shm():
    spec = build(ipc="host", pid="host")
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["uts", "mount", "cgroup"]
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert shm == {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                   "options": ["rbind", "nosuid", "noexec", "nodev"]}
    assert next(m for m in spec["mounts"] if m["destination"] == "/proc")["type"] == "proc"
    rootless = build(rootless=True, ipc="host", pid="host")
    proc = next(m for m in rootless["mounts"] if m["destination"] == "/proc")
    assert proc["type"] == "bind" and proc["source"] == "/proc"
    # host_stat here knows no /dev/mqueue: a rootless container gets none then
    assert not [m for m in rootless["mounts"] if m["destination"] == "/dev/mqueue"]
    shm = next(m for m in build(shm_size="1g")["mounts"] if m["destination"] == "/dev/shm")
    assert "size=1048576k" in shm["options"]
    with pytest.raises(SpecError, match="--shm-size has no effect with --ipc host"):
        build(ipc="host", shm_size="1g")
    with pytest.raises(SpecError, match="--ipc container:x"):
        build(ipc="container:x")


def test_sysctls():
    spec = build(network="none", sysctls=("net.ipv4.ip_forward=1", "kernel.shmmax=1024",
                                         "fs/mqueue/msg_max=20"))
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1024",
                                       "fs.mqueue.msg_max": "20"}
    for kw, match in ((dict(sysctls=("net.ipv4.ip_forward=1",)), "host's network namespace"),
                      (dict(ipc="host", sysctls=("kernel.shmmax=1",)), "--ipc host"),
                      (dict(sysctls=("vm.swappiness=1",)), "not a namespaced sysctl"),
                      (dict(sysctls=("kernel.sem",)), "KEY=VALUE")):
        with pytest.raises(SpecError, match=match):
            build(**kw)


def test_group_add_labels_and_stop_signal():
    spec = build(user="alice", group_add=("www", "4242"))
    assert spec["process"]["user"]["additionalGids"] == [44, 100, 33, 4242]
    with pytest.raises(SpecError, match="unable to find group nope"):
        build(group_add=("nope",))
    # a single mapped gid (rootless without subordinate ids) can hold no supplementary group
    with pytest.raises(SpecError, match="--group-add: gid 4242 is not mapped"):
        build(rootless=True, group_add=("4242",))
    notes = build(labels=("team=ml",), stop_signal="usr1", stop_timeout=30)["annotations"]
    assert json.loads(notes["org.minictr.labels"]) == {"maintainer": "someone",
                                                      "org.opencontainers.image.version": "1.25",
                                                      "team": "ml"}
    assert notes["org.opencontainers.image.stopSignal"] == "SIGUSR1"
    assert notes["org.minictr.stop-timeout"] == "30"
    image = dict(IMAGE, config=dict(IMAGE["config"], StopSignal="SIGQUIT"))
    assert build(image)["annotations"]["org.opencontainers.image.stopSignal"] == "SIGQUIT"
    with pytest.raises(SpecError, match="--stop-signal 'SIGNOPE' is not a signal"):
        build(stop_signal="SIGNOPE")


def test_no_new_privileges_is_off_with_privileged_unless_asked():
    assert build()["process"]["noNewPrivileges"] is True
    assert build(privileged=True)["process"]["noNewPrivileges"] is False
    assert build(security_opts=("no-new-privileges=false",))["process"]["noNewPrivileges"] \
        is False
    assert build(privileged=True, security_opts=("no-new-privileges",))["process"][
        "noNewPrivileges"] is True


def test_init_is_part_of_the_spec():
    spec = build_spec(IMAGE, RunOptions(image="nginx", init=True), rootless=False,
                      container_id=CID, rootfs_path="/run/r", read_file=FILES.get,
                      host_env={}, host_stat=host_stat, host_ids=(0, 0),
                      init_path="/opt/minictr/mcinit")
    assert spec["process"]["args"] == ["/dev/init", "--", "/docker-entrypoint.sh", "nginx"]
    assert spec["mounts"][-1] == {"destination": "/dev/init", "type": "bind",
                                  "source": "/opt/minictr/mcinit",
                                  "options": ["bind", "ro", "nosuid", "nodev"]}
    with pytest.raises(SpecError, match="init program was not found"):
        build(init=True)


def test_etc_files_are_bind_mounted_and_a_users_own_wins():
    etc = {"/etc/resolv.conf": "/c/resolv.conf", "/etc/hosts": "/c/hosts",
           "/etc/hostname": "/c/hostname"}
    spec = build_spec(IMAGE, RunOptions(image="nginx", volumes=("/data:/etc/hosts",)),
                      rootless=False, container_id=CID, rootfs_path="/run/r",
                      read_file=FILES.get, host_env={}, host_stat=host_stat, host_ids=(0, 0),
                      etc_files=etc)
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert by_dest["/etc/resolv.conf"] == {"destination": "/etc/resolv.conf", "type": "bind",
                                           "source": "/c/resolv.conf",
                                           "options": ["rbind", "rprivate"]}
    assert by_dest["/etc/hostname"]["source"] == "/c/hostname"
    assert by_dest["/etc/hosts"]["source"] == "/data"


def test_capabilities_within_what_the_launcher_holds():
    held = tuple(c for c in defaults.ALL_CAPABILITIES if c != "CAP_SYS_TIME")
    with pytest.raises(SpecError, match="CAP_SYS_TIME: minictr does not hold"):
        build(cap_add=("SYS_TIME",), launcher_caps=held)
    assert "CAP_SYS_TIME" not in build(privileged=True, launcher_caps=held)["process"][
        "capabilities"]["bounding"]
    # in a user namespace of its own the container gets its capabilities there, whatever the
    # launcher holds
    spec = build(rootless=True, cap_add=("SYS_TIME",), launcher_caps=held)
    assert "CAP_SYS_TIME" in spec["process"]["capabilities"]["bounding"]
