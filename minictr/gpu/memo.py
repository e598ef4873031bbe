"""A GPU request resolved once, replayed while nothing it was resolved from has changed.

Resolving `--gpus all` (resolve.py) reads the request, the site's settings, the driver (from
its discovery cache), the image (its loader cache, os-release, CUDA compat libraries) and
whether an MPS daemon runs, and writes nothing: its result is the driver's edits of the spec
(device nodes, mounts, variables) and a new loader cache. Two runs of the same image with the
same request get the same result, and computing it again (importing the request, selection,
injection and loader-cache code, then running it) was most of what `--gpus` added to a warm
start. So the result is kept in ``STATE/.cache/gpu/resolved-<key>.json``:

- ``<key>`` is the sha256 of everything the resolution reads that is not a host file: the
  request's inputs as found in the spec (spec/gpu_request.GpuInputs), the [nvidia] settings as
  loaded now and the driver-root flags and variables, the image's layer directories (stored
  layers never change), the effective uid, CUDA_MPS_PIPE_DIRECTORY, and the identity of the
  code that resolves (every module of this package and the spec modules it uses);
- the entry holds the *witnesses* of the host files (gpu/driver.py's): those of the driver's
  discovery, and the MPS control socket's identity. It is replayed only when the host still
  answers every one of them the same way (``still_holds``); a new driver, a GPU added, a library
  replaced, an MPS daemon started or stopped mean a new resolution, written over it;
- it holds the edits as CDI containerEdits (spec/edits.py's ``to_cdi``/``from_cdi``), with the
  container's own directory (where the loader cache is written) as a placeholder, the variables
  the request unsets, the loader cache, and the warnings the resolution gave (replayed: a
  warning is not lost because the answer was remembered).

Not memoised: CDI device names (their spec files are read every time), a run inside a Slurm
job (its allocation comes from the job's environment), an image that asks for GPUs on a host
without a driver, and a caller that reads the image another way (``minictr-runc`` reads the
bundle's rootfs). The directory and entries are trusted as every cache's (cachefiles.py).
"""
from __future__ import annotations

import binascii
import os

from minictr import cachefiles, jsonio

FORMAT = 1
PLACEHOLDER = "@minictr-container-files@"
_GPU = os.path.dirname(os.path.abspath(__file__))
_SPEC = os.path.join(os.path.dirname(_GPU), "spec")
_CODE = [os.path.join(_GPU, n) for n in sorted(os.listdir(_GPU)) if n.endswith(".py")] + \
    [os.path.join(_SPEC, n) for n in ("edits.py", "gpu_request.py", "mounts.py")]


class Replay:
    """A remembered resolution, ready to apply (``spec``) to this container, and the host
    answers it rests on (``witnesses``)."""

    def __init__(self, edits, unset_env: tuple, files: tuple, warnings: list[str], name: str,
                 witnesses: list):
        self.edits, self.unset_env, self.files = edits, unset_env, files
        self.warnings, self.name, self.witnesses = warnings, name, witnesses


def key(inputs, gpu_roots, lowerdirs) -> str | None:
    """The entry's key, or None when it cannot be made (a module of the code unreadable)."""
    from minictr import settings

    material = [FORMAT, os.geteuid(), list(inputs), list(gpu_roots or ()),
                [os.environ.get(f"MINICTR_NVIDIA_{n}_ROOT") for n in ("DRIVER", "DEV", "PROC")],
                os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
                {k: v for k, v in settings.load("nvidia").items() if k != "_sources"},
                list(lowerdirs)]
    code = cachefiles.code_identity(_CODE)
    return None if code is None else cachefiles.key_of(material + code)


def entry_path(cache_dir: str, memo_key: str) -> str:
    return os.path.join(cache_dir, f"resolved-{memo_key[:32]}.json")


def load(cache_dir: str, memo_key: str, files_dir: str) -> Replay | None:
    """The remembered resolution, if whole, trusted and still true of the host."""
    path = entry_path(cache_dir, memo_key)
    data = cachefiles.read(path)
    if data is None:
        return None
    from minictr.gpu.witnesses import still_holds
    from minictr.spec.edits import ContainerEdits

    try:
        doc = jsonio.loads(data.replace(PLACEHOLDER.encode(),
                                        jsonio.dumps(files_dir)[1:-1].encode()))
        if doc.get("format") != FORMAT or doc.get("key") != memo_key or \
                not still_holds(doc["witnesses"]):
            return None
        return Replay(ContainerEdits.from_cdi(doc["edits"]), tuple(doc["unset_env"]),
                      ((str(doc["file"]), binascii.a2b_base64(doc["cache"])),),
                      list(doc["warnings"]), path, doc["witnesses"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None                     # damaged or of another shape: resolve again


def store(cache_dir: str, memo_key: str, resolved, files_dir: str, warnings: list[str],
          roots) -> list | None:
    """Remember ``resolved`` (resolve.Resolved with its edits) for the next run, and return
    the witnesses it rests on; nothing (None) when the driver's discovery left none to check it
    by."""
    from minictr.gpu import driver_cache, mps
    from minictr.gpu.witnesses import witness

    seen = driver_cache.witnesses(cache_dir, roots)
    if seen is None or resolved.edits is None:
        return None
    seen = list(seen) + [witness("stat", os.path.join(mps.pipe_dir(roots.mps_pipe_dir),
                                                     "control"))]
    ((name, cache),) = resolved.files
    doc = jsonio.dumps({"format": FORMAT, "key": memo_key, "witnesses": seen,
                        "unset_env": list(resolved.unset_env), "warnings": warnings,
                        "file": name, "cache": binascii.b2a_base64(cache, newline=False).decode(),
                        "edits": resolved.edits.to_cdi()})
    quoted = jsonio.dumps(files_dir)[1:-1]
    if PLACEHOLDER in doc or not quoted:
        return None
    cachefiles.write(entry_path(cache_dir, memo_key), doc.replace(quoted, PLACEHOLDER).encode())
    return seen
