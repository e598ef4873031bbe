"""The site and user configuration files (TOML).

    /etc/minictr/config.toml                     the site's
    $XDG_CONFIG_HOME/minictr/config.toml         the user's (default ~/.config/minictr/config.toml)

A key in the user's file replaces the same key of the site's; a key in neither has its default.
``MINICTR_CONFIG=FILE`` replaces both with one file (``MINICTR_CONFIG=`` with none); a file
named there must exist.
The user's file is that of whoever runs minictr (for ``minictr-runc``: the engine that calls it,
e.g. root's for dockerd, the job user's under Slurm), so it can relax nothing that user could
not do anyway.
Each table is described in ``SCHEMA`` (key -> expected type, default); a table or key not listed
there, or a value of the wrong type, is an error naming the file and the key: a setting that
is silently ignored is a setting that silently does not hold. docs/configuration.md documents
every key.

Read only by commands that need a setting: a run without GPUs reads neither file (tomllib is
imported only when a file exists). Nothing here changes after it is read (STYLE.md §9.2):
``load`` returns plain dicts that the caller turns into its own record.
"""
from __future__ import annotations

import os

from minictr.errors import UsageError

SYSTEM_FILE = "/etc/minictr/config.toml"

# table -> key -> (type, default). Paths are str; lists hold str.
SCHEMA: dict[str, dict[str, tuple[type, object]]] = {
    "run": {
        # job-native mode by default (minictr run --no-hpc turns it off): docs/hpc.md
        "hpc": (bool, False),
    },
    "nvidia": {
        # where the driver lives (MINICTR_NVIDIA_*_ROOT and --nvidia-*-root win over these)
        "driver-root": (str, "/"),
        "dev-root": (str, "/"),
        "proc-root": (str, "/proc"),
        # CDI spec directories read for cdi.k8s.io/* annotations and CDI names (later wins)
        "cdi-spec-dirs": (list, ["/etc/cdi", "/var/run/cdi"]),
        # which of a config.json's GPU request inputs are read (nvidia-container-runtime's
        # order: annotations, then volume mounts, then NVIDIA_VISIBLE_DEVICES)
        "accept-cdi-annotations": (bool, True),
        "accept-nvidia-visible-devices-as-volume-mounts": (bool, False),
        "accept-nvidia-visible-devices-envvar": (bool, True),
        "accept-nvidia-visible-devices-envvar-when-unprivileged": (bool, True),
        # skip every NVIDIA_REQUIRE_* check (as NVIDIA_DISABLE_REQUIRE in the container's env)
        "disable-require": (bool, False),
    },
}


def user_file(env: dict[str, str]) -> str:
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                        "minictr", "config.toml")


def files(env: dict[str, str] | None = None) -> list[str]:
    """The files read, site first."""
    env = os.environ if env is None else env
    if "MINICTR_CONFIG" in env:
        return [env["MINICTR_CONFIG"]] if env["MINICTR_CONFIG"] else []
    return [SYSTEM_FILE, user_file(env)]


def load(table: str, env: dict[str, str] | None = None,
         paths: list[str] | None = None) -> dict[str, object]:
    """``table``'s settings: defaults, then the site's file, then the user's, each checked
    (``paths``: other files, in that order, for tests)."""
    schema = SCHEMA[table]
    out = {key: default for key, (_, default) in schema.items()}
    out["_sources"] = []
    explicit = paths is None and "MINICTR_CONFIG" in (os.environ if env is None else env)
    for path in files(env) if paths is None else paths:
        doc = _read(path)
        if doc is None:
            if explicit:
                raise UsageError(f"MINICTR_CONFIG={path}: no such file")
            continue
        for name, value in doc.items():
            if name not in SCHEMA:
                raise UsageError(f"{path}: unknown table [{name}]",
                                 hint="known tables: " + ", ".join(f"[{t}]" for t in SCHEMA))
            if not isinstance(value, dict):
                raise UsageError(f"{path}: {name} must be a table ([{name}])")
        for key, value in (doc.get(table) or {}).items():
            out[key] = _check(path, table, key, value)
        out["_sources"].append(path)
    return out


def _read(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from err
    import tomllib                       # only when a file exists: ~2 ms

    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid TOML: {err}",
                         hint="see docs/configuration.md for the format") from None


def _check(path: str, table: str, key: str, value):
    schema = SCHEMA[table]
    if key not in schema:
        raise UsageError(f"{path}: unknown key {key!r} in [{table}]",
                         hint="known keys: " + ", ".join(schema))
    kind, _ = schema[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)) or (
            kind is list and not all(isinstance(v, str) for v in value)):
        what = "a list of strings" if kind is list else f"a {kind.__name__}"
        raise UsageError(f"{path}: [{table}] {key} must be {what}, not {value!r}")
    for item in (value if kind is list else [value] if key.endswith(("-root", "-dir")) else []):
        if not item.startswith("/"):
            raise UsageError(f"{path}: [{table}] {key}: {item!r} is not an absolute path")
    return value
