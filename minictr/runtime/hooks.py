"""OCI hooks (config.md, "POSIX-platform Hooks"): programs the runtime runs at fixed points of a
container's life, each given the container's state as JSON on its stdin.

| stage            | run by, where                           | when                              |
|------------------|-----------------------------------------|-----------------------------------|
| prestart         | the launcher, runtime namespaces        | create: mounts done, before pivot |
| createRuntime    | the launcher, runtime namespaces        | right after prestart              |
| createContainer  | the container's init, its mount ns      | next, still before pivot_root     |
| startContainer   | the container's init, after pivot_root  | start: just before the exec       |
| poststart        | `start`, runtime namespaces             | after the exec; failure kills     |
| poststop         | `delete`, runtime namespaces            | after the container is gone       |

``path`` is executed with ``args`` as its argv (args[0] is argv[0], as execv(3)) and exactly
``env`` as its environment; a ``timeout`` (seconds) kills it. Its output becomes part of the
error when it fails. NVIDIA's legacy prestart hook (nvidia-container-runtime-hook) setns()es
into the blocked init by pid: that is why prestart runs after the mounts and before pivot_root.

The hooks run through the syscall face (``kernel.run_program``), so a dry run records them.
"""
from __future__ import annotations

from _collections_abc import Callable

from minictr import jsonio
from minictr.errors import RuntimeSetupError

# Imported here, not lazily: startContainer hooks run after pivot_root(2), when the host's
# library directory is no longer reachable. subprocess brings select and _posixsubprocess.
import subprocess  # noqa: F401

Explain = Callable[[str], None] | None
STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
          "poststop")


def state_json(state: dict) -> bytes:
    """The state a hook reads (runtime.md "State"): only the standard fields."""
    keys = ("ociVersion", "id", "status", "pid", "bundle", "annotations")
    return jsonio.dumps({k: state[k] for k in keys if k in state}).encode()


def hooks_of(spec: dict, stage: str) -> list[dict]:
    return list((spec.get("hooks") or {}).get(stage) or ())


def run_hooks(kernel, spec: dict, stage: str, state: dict, explain: Explain) -> None:
    """Run every hook of ``stage`` in order; the first failure raises (the caller decides what a
    failure means at that stage: poststop only warns)."""
    for number, hook in enumerate(hooks_of(spec, stage)):
        run_hook(kernel, hook, stage, number, state, explain)


def run_hook(kernel, hook: dict, stage: str, number: int, state: dict, explain: Explain) -> None:
    path = hook["path"]
    args = list(hook.get("args") or [path])
    env = list(hook.get("env") or [])
    timeout = hook.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
        raise RuntimeSetupError(f"hooks.{stage}[{number}].timeout must be a positive integer")
    if explain:
        explain(f"hook {stage}[{number}]: {' '.join(args)}  (state on stdin, status "
                f"{state.get('status')})" + (f", timeout {timeout}s" if timeout else ""))
    code, output = kernel.run_program(path, args, env, state_json(state), timeout)
    if code is None:
        raise RuntimeSetupError(f"hook {stage}[{number}] {path} timed out after {timeout}s",
                                hint="the hook was killed")
    if code != 0:
        tail = output.decode(errors="replace").strip()[-800:]
        raise RuntimeSetupError(f"hook {stage}[{number}] {path} exited {code}"
                                + (f": {tail}" if tail else ""))
