"""The ``process`` half of the plan: args, env, cwd, capabilities and rlimits (config.md,
"Process"), with docker's rules for each. Pure functions of the image config and the options.
"""
from __future__ import annotations

import os
from _collections_abc import Callable

from minictr.errors import SpecError
from minictr.spec import defaults
from minictr.spec.edits import merge_env

ReadHostFile = Callable[[str], bytes]


# ---------------------------------------------------------------- args


def process_args(config: dict, command: tuple[str, ...], entrypoint: str | None) -> list[str]:
    """Entrypoint + Cmd, docker's way: a command after IMAGE replaces Cmd; --entrypoint replaces
    Entrypoint and drops the image's Cmd (a command given on the line still follows it);
    --entrypoint "" clears the Entrypoint."""
    if entrypoint is None:
        entry = list(config.get("Entrypoint") or [])
        cmd = list(command) if command else list(config.get("Cmd") or [])
    else:
        entry = [entrypoint] if entrypoint else []
        cmd = list(command)
    args = entry + cmd
    if not args:
        raise SpecError("no command specified: the image has no Entrypoint or Cmd",
                        hint="give a command after the image name, e.g. minictr run IMAGE sh")
    return args


# ---------------------------------------------------------------- env


def parse_env_file(path: str, data: bytes, host_env: dict) -> list[str]:
    """docker's ParseEnvFile: one KEY=VALUE per line, taken literally (no quotes, no expansion);
    blank lines and lines starting with # are skipped; a bare KEY is copied from the host's
    environment, or dropped when it is not set there."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: invalid UTF-8 in env file") from err
    out = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        if "\0" in line:
            raise SpecError(f"{path}:{number}: a NUL byte (execve(2) cannot pass it)",
                            hint="an env file is text: one KEY=VALUE per line")
        key, sep, value = line.partition("=")
        if not key:
            raise SpecError(f"{path}:{number}: no variable name on line {line!r}")
        if any(c.isspace() for c in key):
            raise SpecError(f"{path}:{number}: variable {key!r} contains whitespace")
        if sep:
            out.append(f"{key}={value}")
        elif key in host_env:
            out.append(f"{key}={host_env[key]}")
    return out


def parse_env_option(entry: str, host_env: dict) -> list[str]:
    """-e KEY=VALUE, or -e KEY to copy KEY from the host (dropped when unset there)."""
    key, sep, _ = entry.partition("=")
    if not key or any(c.isspace() for c in key):
        raise SpecError(f"-e {entry}: invalid environment variable name {key!r}")
    if sep:
        return [entry]
    return [f"{key}={host_env[key]}"] if key in host_env else []


def process_env(config: dict, *, hostname: str, home: str, tty: bool, env_files: tuple,
                env: tuple, host_env: dict, read_host_file: ReadHostFile,
                base_env: list[str] | None = None) -> list[str]:
    """``base_env`` (job-native mode: the host's passed variables), then the image's Env, then
    defaults for what they lack (PATH, HOSTNAME, HOME, TERM with a tty), then --env-file
    entries, then -e entries; a later KEY replaces an earlier one. In job-native mode the
    host's HOME, USER and LOGNAME win over the image's: the container is yours."""
    result = merge_env(list(base_env or ()), config.get("Env") or [])
    if base_env is not None:
        result = merge_env(result, [e for e in base_env
                                    if e.partition("=")[0] in ("HOME", "USER", "LOGNAME")])
    keys = {e.partition("=")[0] for e in result}
    fallback = [("PATH", defaults.DEFAULT_PATH), ("HOSTNAME", hostname), ("HOME", home)]
    if tty:
        fallback.append(("TERM", "xterm"))
    result += [f"{k}={v}" for k, v in fallback if k not in keys]
    for path in env_files:
        try:
            data = read_host_file(path)
        except OSError as err:
            raise SpecError(f"--env-file {path}: {err.strerror or err}") from err
        result = merge_env(result, parse_env_file(path, data, host_env))
    for entry in env:
        result = merge_env(result, parse_env_option(entry, host_env))
    return result


# ---------------------------------------------------------------- cwd


def process_cwd(workdir: str | None, config: dict) -> str:
    """-w, else the image's WorkingDir, else "/"; config.md requires an absolute path."""
    cwd = workdir or config.get("WorkingDir") or "/"
    flag = "-w" if workdir else "the image's WorkingDir"
    if not cwd.startswith("/"):
        raise SpecError(f"{flag} {cwd!r} is not an absolute path",
                        hint="the working directory must start with /")
    parts = [p for p in cwd.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SpecError(f"{flag} {cwd!r} contains '..'")
    return "/" + "/".join(parts)


# ---------------------------------------------------------------- capabilities


def normalize_capability(name: str) -> str:
    """"net_admin", "CAP_NET_ADMIN", "Net_Admin" -> "CAP_NET_ADMIN"; "all" -> "ALL"."""
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    cap = upper if upper.startswith("CAP_") else "CAP_" + upper
    if cap not in defaults.ALL_CAPABILITIES:
        raise SpecError(f"unknown capability: {name!r}",
                        hint="see capabilities(7); names with or without CAP_, or ALL")
    return cap


def capability_set(cap_add, cap_drop, *, privileged: bool, available=None) -> list[str]:
    """Docker's TweakCapabilities: --privileged gives all; --cap-add ALL gives all but the
    dropped; --cap-drop ALL keeps only the added; otherwise defaults - drops + adds.

    ``available``: the capabilities the launcher holds and so can give (None: any). "All"
    (--privileged, --cap-add ALL) means all of those, as podman takes its bounding set, and
    a default the launcher lacks is left out; but a capability named in --cap-add that the
    launcher does not hold is an error, as runc's capset fails: the container would
    otherwise run without it, silently."""
    adds = list(dict.fromkeys(normalize_capability(c) for c in cap_add))
    drops = list(dict.fromkeys(normalize_capability(c) for c in cap_drop))
    every = [c for c in defaults.ALL_CAPABILITIES if available is None or c in available]
    missing = [c for c in adds if c != "ALL" and c not in every]
    if missing and not privileged:
        raise SpecError(f"--cap-add {', '.join(missing)}: minictr does not hold "
                        f"{'this capability' if len(missing) == 1 else 'these capabilities'}, "
                        "so it cannot give it to the container",
                        hint="it is not in the launcher's permitted set (CapPrm in "
                        "/proc/self/status; a container runtime or sandbox may have dropped "
                        "it); runc refuses the same")
    if privileged:
        return every
    if "ALL" in adds:
        return [c for c in every if c not in drops]
    if "ALL" in drops:
        return [c for c in adds if c != "ALL"]
    caps = [c for c in defaults.DEFAULT_CAPABILITIES if c not in drops and c in every]
    return caps + [c for c in adds if c not in caps]


def process_capabilities(caps: list[str], uid: int) -> dict:
    """The five sets. Inheritable and ambient stay empty (CVE-2022-24769: an inheritable set
    let file capabilities grant more than the bounding set). A non-root process starts with
    empty effective and permitted sets, as docker does; bounding still limits what a setuid
    binary could gain."""
    root = uid == 0
    return {"bounding": list(caps), "effective": list(caps) if root else [],
            "permitted": list(caps) if root else [], "inheritable": [], "ambient": []}


# ---------------------------------------------------------------- rlimits


RLIM_INFINITY = 2**64 - 1


def _rlimit_value(text: str, entry: str) -> int:
    if text.strip() == "-1":
        return RLIM_INFINITY
    if not text.strip().isdecimal() or int(text) >= 2**63:
        raise SpecError(f"--ulimit {entry}: invalid value {text!r}",
                        hint="NAME=SOFT[:HARD] with numbers below 2^63, -1 for unlimited")
    return int(text)


def parse_ulimit(entry: str) -> dict:
    """--ulimit NAME=SOFT[:HARD] -> {"type": "RLIMIT_...", "soft", "hard"} (setrlimit(2))."""
    name, sep, values = entry.partition("=")
    if not sep or name.strip().lower() not in defaults.RLIMITS:
        raise SpecError(f"--ulimit {entry}: unknown limit {name!r}",
                        hint="one of " + ", ".join(sorted(defaults.RLIMITS)))
    soft_text, _, hard_text = values.partition(":")
    soft = _rlimit_value(soft_text, entry)
    hard = _rlimit_value(hard_text, entry) if hard_text else soft
    if soft > hard:
        raise SpecError(f"--ulimit {entry}: soft limit {soft} is above hard limit {hard}")
    return {"type": defaults.RLIMITS[name.strip().lower()], "hard": hard, "soft": soft}


def process_rlimits(ulimits: tuple[str, ...], nofile_limit: int | None = None) -> list[dict]:
    """podman's RLIMIT_NOFILE 1048576:1048576, or ``nofile_limit`` for both when the launcher
    cannot set a hard limit that high (setrlimit(2) needs CAP_SYS_RESOURCE to raise a hard
    limit, and fs.nr_open caps it); then each --ulimit (a later one of a kind wins). An
    explicit --ulimit is never lowered: if it cannot be set, the run fails and says so."""
    limits = {r["type"]: r for r in defaults.default_rlimits()}
    nofile = limits["RLIMIT_NOFILE"]
    if nofile_limit is not None and nofile_limit < nofile["hard"]:
        limits["RLIMIT_NOFILE"] = dict(nofile, hard=nofile_limit,
                                       soft=min(nofile["soft"], nofile_limit))
    for entry in ulimits:
        limit = parse_ulimit(entry)
        limits[limit["type"]] = limit
    return list(limits.values())


# ---------------------------------------------------------------- exec


def exec_process_settings(process: dict, command: list[str], env, tty: bool,
                          workdir: str | None, user: str | None) -> dict:
    """The process of an exec: the container's own settings (capabilities, no_new_privs,
    rlimits, user, env, cwd), with exec's command, -e, -t, -w and -u applied."""
    process = dict(process, args=list(command), terminal=tty)
    process.pop("oomScoreAdj", None)
    if env:
        host = dict(os.environ)
        process["env"] = merge_env(process.get("env", []),
                                   [e for entry in env for e in parse_env_option(entry, host)])
    if workdir:
        process["cwd"] = process_cwd(workdir, {})
    if user:
        uid, _, gid = user.partition(":")
        if not uid.isdecimal() or (gid and not gid.isdecimal()):
            raise SpecError("exec -u takes numeric UID[:GID]",
                            hint="names are resolved by `minictr run -u` only")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        process["capabilities"] = process_capabilities(
            list(process.get("capabilities", {}).get("bounding", ())), int(uid))
    return process
