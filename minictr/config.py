"""Where things live. Root: /var/lib/minictr (store) and /run/minictr (state).
Rootless: $XDG_DATA_HOME/minictr and $XDG_RUNTIME_DIR/minictr (or a private /tmp dir).

``--root DIR`` or ``MINICTR_ROOT`` moves the store; ``MINICTR_STATE`` moves the state dir.
Computed once, at start, and passed down: nothing changes it mid-run (STYLE.md §9.2).
"""
from __future__ import annotations

import os
from minictr.records import record

# native/mcinit.c, built into the package (setup.py): what every container process is exec'd
# through, and the init of `run --init` (bind-mounted into the container at /dev/init)
INIT_BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mcinit")


@record
class Paths:
    store: str        # content-addressed blobs, layers, images (persistent)
    state: str        # running containers' state (volatile)
    rootless: bool    # running without root: a user namespace is needed

    @property
    def containers(self) -> str:
        """Per-container writable dirs (overlay upper/work), on the store's filesystem."""
        return os.path.join(self.store, "containers")


def default_paths(root: str | None = None, state: str | None = None,
                  env: dict[str, str] | None = None, euid: int | None = None,
                  exists=os.path.isdir) -> Paths:
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    rootless = euid != 0
    root = root or env.get("MINICTR_ROOT")
    state = state or env.get("MINICTR_STATE")
    if not rootless:
        return Paths(store=root or "/var/lib/minictr", state=state or "/run/minictr",
                     rootless=False)
    home = env.get("HOME") or os.path.expanduser("~")
    data = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    if not state:
        # On a compute node XDG_RUNTIME_DIR often names the login node's /run/user/UID, which
        # does not exist here (no login session): then a private dir under /tmp, as podman.
        runtime_dir = env.get("XDG_RUNTIME_DIR")
        state = (os.path.join(runtime_dir, "minictr") if runtime_dir and exists(runtime_dir)
                 else f"/tmp/minictr-{euid}")
    return Paths(store=root or os.path.join(data, "minictr"), state=state, rootless=True)
