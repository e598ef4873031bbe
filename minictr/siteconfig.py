"""Defaults for `minictr run` set by the site or the user, in TOML.

Read in order, a later file overriding an earlier one key by key:

    /etc/minictr/config.toml                        the site's (cluster admins)
    $XDG_CONFIG_HOME/minictr/config.toml            the user's (default ~/.config/minictr/...)

``MINICTR_CONFIG=FILE`` replaces both with one file (``MINICTR_CONFIG=`` with none). Known
settings (anything else is an error, never silently ignored):

    [run]
    hpc = true          # job-native mode by default (minictr run --no-hpc turns it off)

A command-line option always wins over a configured default. tomllib is imported only when
a file exists, so a run without configuration pays two stat(2) calls.
"""
from __future__ import annotations

import os

from minictr.errors import UsageError
from minictr.records import record

SITE_CONFIG = "/etc/minictr/config.toml"
KNOWN = {"run": {"hpc": bool}}


@record
class Settings:
    hpc: bool = False


def config_files(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    if "MINICTR_CONFIG" in env:
        return [env["MINICTR_CONFIG"]] if env["MINICTR_CONFIG"] else []
    home = env.get("HOME") or os.path.expanduser("~")
    user = os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                        "minictr", "config.toml")
    return [SITE_CONFIG, user]


def load(env: dict[str, str] | None = None) -> Settings:
    values: dict = {}
    explicit = "MINICTR_CONFIG" in (os.environ if env is None else env)
    for path in config_files(env):
        if not os.path.exists(path):
            if explicit:
                raise UsageError(f"MINICTR_CONFIG={path}: no such file")
            continue
        values.update(_read(path))
    return Settings(**values)


def _read(path: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: not valid TOML: {err}") from err
    out = {}
    for table, entries in doc.items():
        if table not in KNOWN or not isinstance(entries, dict):
            raise UsageError(f"{path}: unknown setting {table!r}",
                             hint="known: " + ", ".join(f"[{t}] {k}" for t in KNOWN
                                                        for k in KNOWN[t]))
        for key, value in entries.items():
            kind = KNOWN[table].get(key)
            if kind is None:
                raise UsageError(f"{path}: unknown setting {table}.{key}",
                                 hint="known: " + ", ".join(f"{table}.{k}" for k in KNOWN[table]))
            if not isinstance(value, kind):
                raise UsageError(f"{path}: {table}.{key} must be a {kind.__name__}, "
                                 f"not {type(value).__name__}")
            out[key] = value
    return out
