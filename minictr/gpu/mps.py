"""--gpu-memory through CUDA MPS (Multi-Process Service).

Nothing in the kernel or the container limits GPU memory; the MPS server does, for clients that
connect to it. A client is a CUDA program whose environment names the server's pipe directory
(``CUDA_MPS_PIPE_DIRECTORY``, default /tmp/nvidia-mps, holding the ``control`` socket of
``nvidia-cuda-mps-control -d``) and that can reach it. ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``
("0=20G,1=10G", CUDA device ordinals as the client sees them) caps each device's memory for the
client (CUDA MPS documentation, "Device Memory Limit"). What is not enforced: a program that
unsets the variable, or that does not use MPS, is not limited; MPS also needs the host's IPC
namespace (its shared memory lives in /dev/shm). See docs/gpus.md.
"""
from __future__ import annotations

import os

from minictr.errors import GPUError

DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
_SIZE = r"^(\d+)\s*([MG])(?:B|iB)?$"        # compiled at first use: only --gpu-memory


def pipe_dir(configured: str | None) -> str:
    return configured or os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR


def running(directory: str) -> bool:
    """An MPS control daemon is running if its control socket exists in the pipe directory."""
    return os.path.exists(os.path.join(directory, "control"))


def parse_limits(text: str) -> dict[int, str]:
    """``0=20G,1=10G`` -> {0: "20G", 1: "10G"} (host GPU indices, as `minictr gpus` shows)."""
    import re                       # only --gpu-memory needs it (~2 ms of imports)

    out: dict[int, str] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        index, sep, size = item.partition("=")
        m = re.match(_SIZE, size.strip(), re.I)
        if not sep or not index.strip().isdecimal() or not m:
            raise GPUError(f"--gpu-memory: cannot parse {item!r}",
                           hint="INDEX=SIZE[,INDEX=SIZE], SIZE in M or G, e.g. 0=20G,1=512M")
        out[int(index)] = f"{int(m.group(1))}{m.group(2).upper()}"
    return out


def limits_env(text: str, selected_indices: list[int], directory: str) -> list[str]:
    """The env for MPS clients. Host indices become the container's CUDA ordinals (the
    selected GPUs, in order, are 0..n-1 inside)."""
    limits = parse_limits(text)
    if not running(directory):
        raise GPUError(f"--gpu-memory needs CUDA MPS, which is not running (no control socket "
                       f"in {directory})",
                       hint="start it on the host: nvidia-cuda-mps-control -d "
                       "(and set CUDA_MPS_PIPE_DIRECTORY if it uses another directory)")
    ordinal = {host: i for i, host in enumerate(selected_indices)}
    missing = sorted(set(limits) - set(ordinal))
    if missing:
        raise GPUError(f"--gpu-memory names GPU {missing[0]}, which is not selected "
                       f"(selected: {', '.join(map(str, selected_indices)) or 'none'})",
                       hint="select it with --gpus too")
    in_order = sorted(limits.items(), key=lambda kv: ordinal[kv[0]])
    value = ",".join(f"{ordinal[h]}={size}" for h, size in in_order)
    return [f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={value}", f"CUDA_MPS_PIPE_DIRECTORY={directory}"]
