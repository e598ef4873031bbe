"""What a seccomp filter costs the launcher: compiling Docker's default profile, with and
without the on-disk cache, and the import cost of each libseccomp binding for Python.

    .venv/bin/python -m bench seccomp [-n N] [--extra-path DIR]

1. Imports. ``python -X importtime -c "import MOD"`` in a fresh interpreter, median of the
   cumulative time: minictr._seccomp (cffi, API mode, this project's choice), Debian's
   python3-seccomp (Cython; read from /usr/lib/python3/dist-packages) and PyPI's pyseccomp
   (ctypes; found on the interpreter's path or under --extra-path, e.g. a scratch venv's
   site-packages). A binding that is absent is skipped with the reason.
2. Compiling the resolved default profile (amd64: x86-64, x86 and x32 sections):
   in-process medians for minictr's compile_filter (libseccomp + the ENOSYS stub) and for the
   same rules through python3-seccomp; then in fresh interpreters that have already imported
   what ``minictr run`` imports anyway, from ``import minictr.runtime.seccomp_cache`` on: a
   cache miss (imports libseccomp, compiles, writes) and a cache hit (reads the entry;
   libseccomp is not loaded).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from bench import common

DEBIAN_DIST = "/usr/lib/python3/dist-packages"
BINDINGS = (("minictr._seccomp (cffi API mode)", "minictr._seccomp", None),
            ("python3-seccomp (Debian, Cython)", "seccomp", DEBIAN_DIST),
            ("pyseccomp (PyPI, ctypes)", "pyseccomp", None))

# What `minictr run` imports anyway (the syscall face, json, the error and record modules) is
# loaded before the clock starts: the time is what seccomp adds to a start.
END_TO_END = r'''
import json, sys, time
import minictr.errors, minictr.records, minictr.runtime.syscalls
t0 = time.perf_counter_ns()
from minictr.runtime import seccomp_cache
compiled = seccomp_cache.cached_filter(json.loads(sys.argv[1]), sys.argv[2])
t1 = time.perf_counter_ns()
print(t1 - t0, "minictr._seccomp" in sys.modules)
'''


def _spec() -> dict:
    from minictr.spec import defaults
    from minictr.spec.seccomp import resolve_profile
    from minictr.spec.seccomp_default import DEFAULT_PROFILE

    return resolve_profile(DEFAULT_PROFILE, caps=defaults.DEFAULT_CAPABILITIES, arch="amd64")


def import_cost(module: str, path: str | None, n: int) -> float | str:
    """Median cumulative import time in ms, or the reason it could not be measured."""
    code = (f"import sys; sys.path.append({path!r}); " if path else "") + f"import {module}"
    samples = []
    for _ in range(n):
        res = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                             capture_output=True, text=True)
        if res.returncode != 0:
            return res.stderr.strip().splitlines()[-1]
        for line in res.stderr.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)
            if m and m.group(2) == module:
                samples.append(int(m.group(1)) / 1000)
    return statistics.median(samples)


def _python_seccomp_compile(spec: dict) -> bytes:
    """The same rules through Debian's binding (no ENOSYS stub: it has no hook for one)."""
    sys.path.append(DEBIAN_DIST)
    import seccomp as pyseccomp
    from minictr.runtime.seccomp import check

    flt = check(spec)
    act = {"SCMP_ACT_ALLOW": lambda e: pyseccomp.ALLOW, "SCMP_ACT_ERRNO": pyseccomp.ERRNO}
    ops = {name: getattr(pyseccomp, name.removeprefix("SCMP_CMP_")) for name in
           ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
            "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")}
    f = pyseccomp.SyscallFilter(act[flt.default_action](flt.default_errno))
    for arch in flt.architectures:
        try:
            f.add_arch(pyseccomp.Arch(arch.removeprefix("SCMP_ARCH_").lower()))
        except Exception:      # noqa: BLE001 - already there (the native one)
            pass
    for rule in flt.rules:
        action = act[rule.action](rule.errno)
        if rule.action == flt.default_action and rule.errno == flt.default_errno:
            continue
        try:
            f.add_rule(action, rule.name, *(pyseccomp.Arg(i, ops[op], v, v2)
                                            for i, v, v2, op in rule.args))
        except (RuntimeError, ValueError):   # a name this libseccomp does not know
            pass
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def _median_ms(fn, n: int) -> float:
    fn()                                             # warm-up
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples)


def _end_to_end(spec: dict, cache: str, n: int, fresh: bool) -> tuple[float, bool]:
    samples, loaded = [], False
    for _ in range(n):
        if fresh:
            for name in os.listdir(cache) if os.path.isdir(cache) else ():
                os.unlink(os.path.join(cache, name))
        res = subprocess.run([sys.executable, "-c", END_TO_END, json.dumps(spec), cache],
                             capture_output=True, text=True, check=True)
        ns, mod = res.stdout.split()
        samples.append(int(ns) / 1e6)
        loaded = mod == "True"
    return statistics.median(samples), loaded


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench seccomp")
    ap.add_argument("--iterations", "-n", type=int, default=20)
    ap.add_argument("--extra-path", help="a site-packages holding pyseccomp (for its import)")
    args = ap.parse_args(argv)
    n = args.iterations
    from minictr.runtime import seccomp, seccomp_cache

    spec = _spec()
    data: dict = {"imports_ms": {}, "steps_ms": {}}
    out = [f"## Seccomp ({common.machine_info()}, load {common.load_average()})\n",
           f"`python -m bench seccomp -n {n}`, libseccomp {seccomp.libseccomp_version()}\n",
           "| binding | import ms (median, cumulative) |", "|---|---:|"]
    for label, module, path in BINDINGS:
        if module == "pyseccomp" and args.extra_path:
            path = args.extra_path
        value = import_cost(module, path, n)
        data["imports_ms"][label] = value
        out.append(f"| {label} | {value:.2f} |" if isinstance(value, float)
                   else f"| {label} | skip: {value} |")
    compiled = seccomp.compile_filter(spec)
    out += [f"\nDocker's default profile, resolved for amd64 and the default capabilities: "
            f"{len(spec['syscalls'])} rules, {len(compiled.bpf) // 8} BPF instructions; names "
            f"this libseccomp does not know: {', '.join(compiled.unknown_syscalls) or 'none'}.\n",
            "| step | ms (median) |", "|---|---:|"]

    def row(label, ms):
        data["steps_ms"][label] = ms
        out.append(f"| {label} | {ms:.2f} |")

    row("compile_filter, in process (libseccomp + ENOSYS stub)",
        _median_ms(lambda: seccomp.compile_filter(spec), n))
    try:
        row("same rules through python3-seccomp, in process",
            _median_ms(lambda: _python_seccomp_compile(spec), n))
    except ImportError as err:
        out.append(f"| same rules through python3-seccomp | skip: {err} |")
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        seccomp_cache.cached_filter(spec, cache)
        row("cache hit, in process (json + sha256 + read)",
            _median_ms(lambda: seccomp_cache.cached_filter(spec, cache), n))
        miss, loaded_miss = _end_to_end(spec, cache, n, fresh=True)
        row("fresh interpreter, cache miss (imports + compile + write)", miss)
        hit, loaded_hit = _end_to_end(spec, cache, n, fresh=False)
        row("fresh interpreter, cache hit (imports + read)", hit)
    out.append(f"\nlibseccomp loaded: on a miss {loaded_miss}, on a hit {loaded_hit}.")
    text = "\n".join(out) + "\n"
    common.publish("seccomp", text, data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
