"""process.args, env, cwd, capabilities and rlimits: docker's rules (minictr/spec/process.py)."""
import pytest

from minictr.errors import SpecError
from minictr.spec import defaults
from minictr.spec import process as proc

IMAGE = {"Entrypoint": ["/entry.sh"], "Cmd": ["serve", "--port", "80"]}
CMD_ONLY = {"Cmd": ["sh"]}


@pytest.mark.parametrize("config,command,entrypoint,expected", [
    (IMAGE, (), None, ["/entry.sh", "serve", "--port", "80"]),
    (IMAGE, ("debug",), None, ["/entry.sh", "debug"]),              # command replaces Cmd
    (IMAGE, (), "/bin/sh", ["/bin/sh"]),                            # entrypoint drops Cmd
    (IMAGE, ("-c", "id"), "/bin/sh", ["/bin/sh", "-c", "id"]),
    (IMAGE, ("ls", "-l"), "", ["ls", "-l"]),                        # "" clears Entrypoint
    (CMD_ONLY, (), None, ["sh"]),
    (CMD_ONLY, ("echo", "hi"), None, ["echo", "hi"]),
    ({}, ("true",), None, ["true"]),
    ({"Entrypoint": None, "Cmd": None}, ("x",), None, ["x"]),
    ({"Entrypoint": ["a b"]}, (), None, ["a b"]),                   # never split
])
def test_process_args(config, command, entrypoint, expected):
    assert proc.process_args(config, command, entrypoint) == expected


@pytest.mark.parametrize("config,command,entrypoint", [
    ({}, (), None), (IMAGE, (), ""), ({"Cmd": []}, (), None),
])
def test_process_args_no_command(config, command, entrypoint):
    with pytest.raises(SpecError, match="no command") as err:
        proc.process_args(config, command, entrypoint)
    assert "minictr run IMAGE sh" in err.value.hint


def env(config=None, *, tty=False, env_files=(), env_opts=(), host_env=None, files=None,
        home="/root"):
    files = files or {}

    def read_host_file(path):
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return files[path]
    return proc.process_env(config or {}, hostname="h1", home=home, tty=tty,
                            env_files=env_files, env=env_opts, host_env=host_env or {},
                            read_host_file=read_host_file)


def test_env_defaults():
    assert env() == ["PATH=" + defaults.DEFAULT_PATH, "HOSTNAME=h1", "HOME=/root"]
    assert env(tty=True)[-1] == "TERM=xterm"
    assert env(home="/home/alice")[2] == "HOME=/home/alice"


def test_image_env_comes_first_and_keeps_its_values():
    out = env({"Env": ["PATH=/opt/bin", "HOME=/srv", "LANG=C"]}, tty=True)
    assert out == ["PATH=/opt/bin", "HOME=/srv", "LANG=C", "HOSTNAME=h1", "TERM=xterm"]


def test_env_file_then_e_override():
    files = {"/f1": b"# comment\n\n  A=file\nB=file\nEMPTY=\nQUOTED=\"x y\"\nFROMHOST\nUNSET\n"}
    out = env({"Env": ["A=image", "C=image"]}, env_files=("/f1",),
              env_opts=("B=flag", "D", "GONE"), host_env={"FROMHOST": "h", "D": "d"}, files=files)
    assert out == ["A=file", "C=image", "PATH=" + defaults.DEFAULT_PATH, "HOSTNAME=h1",
                   "HOME=/root", "B=flag", "EMPTY=", 'QUOTED="x y"', "FROMHOST=h", "D=d"]


def test_later_env_file_wins():
    files = {"/a": b"X=1\n", "/b": b"X=2\n"}
    assert "X=2" in env(env_files=("/a", "/b"), files=files)
    assert "X=1" not in env(env_files=("/a", "/b"), files=files)


def test_e_can_override_path_and_hostname():
    out = env(env_opts=("PATH=/x", "HOSTNAME=other"))
    assert out[:2] == ["PATH=/x", "HOSTNAME=other"]


@pytest.mark.parametrize("data,where", [
    (b"GOOD=1\n=novalue\n", "/e:2"),
    (b"GOOD=1\n\nBAD KEY=1\n", "/e:3"),
    (b"A=1\nB=\xff\n", "/e:2"),
])
def test_env_file_errors_name_file_and_line(data, where):
    with pytest.raises(SpecError, match=where):
        env(env_files=("/e",), files={"/e": data})


def test_env_file_missing():
    with pytest.raises(SpecError, match="--env-file /nope"):
        env(env_files=("/nope",))


def test_env_file_bom_is_stripped():
    assert "A=1" in env(env_files=("/e",), files={"/e": "\ufeffA=1\n".encode()})


@pytest.mark.parametrize("entry", ["=x", "BAD KEY=1", ""])
def test_bad_e(entry):
    with pytest.raises(SpecError, match="invalid environment variable"):
        env(env_opts=(entry,))


@pytest.mark.parametrize("workdir,config,expected", [
    (None, {}, "/"),
    (None, {"WorkingDir": "/app"}, "/app"),
    ("/work", {"WorkingDir": "/app"}, "/work"),
    ("/a//b/./c/", {}, "/a/b/c"),
    (None, {"WorkingDir": ""}, "/"),
])
def test_cwd(workdir, config, expected):
    assert proc.process_cwd(workdir, config) == expected


@pytest.mark.parametrize("workdir,config,match", [
    ("app", {}, "-w 'app' is not an absolute path"),
    (None, {"WorkingDir": "app"}, "WorkingDir 'app' is not an absolute path"),
    ("/a/../../etc", {}, r"'\.\.'"),
])
def test_cwd_errors(workdir, config, match):
    with pytest.raises(SpecError, match=match):
        proc.process_cwd(workdir, config)


DEFAULT = list(defaults.DEFAULT_CAPABILITIES)


@pytest.mark.parametrize("add,drop,privileged,expected", [
    ((), (), False, DEFAULT),
    (("NET_ADMIN",), (), False, DEFAULT + ["CAP_NET_ADMIN"]),
    (("cap_net_admin",), (), False, DEFAULT + ["CAP_NET_ADMIN"]),
    (("Sys_Ptrace", "SYS_PTRACE"), (), False, DEFAULT + ["CAP_SYS_PTRACE"]),
    (("CHOWN",), (), False, DEFAULT),                        # already there: no duplicate
    ((), ("chown", "CAP_KILL"), False, [c for c in DEFAULT if c not in ("CAP_CHOWN", "CAP_KILL")]),
    ((), ("ALL",), False, []),
    (("NET_RAW",), ("all",), False, ["CAP_NET_RAW"]),
    (("all",), (), False, list(defaults.ALL_CAPABILITIES)),
    (("ALL",), ("SYS_ADMIN",), False,
     [c for c in defaults.ALL_CAPABILITIES if c != "CAP_SYS_ADMIN"]),
    ((), ("ALL",), True, list(defaults.ALL_CAPABILITIES)),   # --privileged wins
])
def test_capability_set(add, drop, privileged, expected):
    assert proc.capability_set(add, drop, privileged=privileged) == expected


@pytest.mark.parametrize("name", ["NET_BOGUS", "CAP_", "", "SYS ADMIN"])
def test_unknown_capability(name):
    with pytest.raises(SpecError, match="unknown capability"):
        proc.capability_set((name,), (), privileged=False)


def test_capabilities_root_and_non_root():
    root = proc.process_capabilities(DEFAULT, 0)
    assert root["bounding"] == root["effective"] == root["permitted"] == DEFAULT
    assert root["inheritable"] == root["ambient"] == []            # CVE-2022-24769
    user = proc.process_capabilities(DEFAULT, 1000)
    assert user["bounding"] == DEFAULT
    assert user["effective"] == user["permitted"] == user["inheritable"] == user["ambient"] == []


@pytest.mark.parametrize("ulimits,expected", [
    ((), [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]),
    (("nofile=1024:2048",), [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}]),
    (("nofile=4096",), [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]),
    (("nproc=10:20", "core=-1"),
     [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576},
      {"type": "RLIMIT_NPROC", "hard": 20, "soft": 10},
      {"type": "RLIMIT_CORE", "hard": 2**64 - 1, "soft": 2**64 - 1}]),
    (("NOFILE=1:2", "nofile=3:4"), [{"type": "RLIMIT_NOFILE", "hard": 4, "soft": 3}]),
])
def test_rlimits(ulimits, expected):
    assert proc.process_rlimits(ulimits) == expected


def test_default_nofile_is_podmans_within_what_the_launcher_can_set():
    """podman's 1048576:1048576 (once runc's hard 1024); a launcher without CAP_SYS_RESOURCE
    cannot raise its hard limit, so the plan falls back to that limit instead of failing; an
    explicit --ulimit is never lowered (it fails at run if it cannot be set)."""
    assert proc.process_rlimits((), 524288) == [
        {"type": "RLIMIT_NOFILE", "hard": 524288, "soft": 524288}]
    assert proc.process_rlimits((), 2**64 - 1)[0]["hard"] == 1048576
    assert proc.process_rlimits(("nofile=2000000",), 524288) == [
        {"type": "RLIMIT_NOFILE", "hard": 2000000, "soft": 2000000}]


def test_cap_add_of_a_capability_the_launcher_lacks_is_an_error():
    """runc fails in capset; minictr once dropped it silently (issue 12)."""
    held = tuple(c for c in defaults.ALL_CAPABILITIES if c != "CAP_SYS_RESOURCE")
    with pytest.raises(SpecError, match="CAP_SYS_RESOURCE: minictr does not hold"):
        proc.capability_set(["SYS_RESOURCE"], [], privileged=False, available=held)
    # "all" means all the launcher holds, and defaults it lacks are left out
    assert proc.capability_set([], [], privileged=True, available=held) == list(held)
    assert "CAP_SYS_RESOURCE" not in proc.capability_set(["ALL"], [], privileged=False,
                                                         available=held)
    no_kill = tuple(c for c in held if c != "CAP_KILL")
    assert "CAP_KILL" not in proc.capability_set([], [], privileged=False, available=no_kill)
    assert proc.capability_set(["SYS_RESOURCE"], [], privileged=False, available=None)[-1] == \
        "CAP_SYS_RESOURCE"


@pytest.mark.parametrize("entry,match", [
    ("bogus=1", "unknown limit"), ("nofile", "unknown limit"), ("nofile=x", "invalid value"),
    ("nofile=10:5", "soft limit 10 is above hard limit 5"), ("nofile=1:y", "invalid value"),
    ("nofile=-2", "invalid value"),
])
def test_rlimit_errors(entry, match):
    with pytest.raises(SpecError, match=match):
        proc.process_rlimits((entry,))
