"""What the run path does without signal.py, copy and the rest (the start-latency work of
issue 15): the replacements give the standard modules' answers."""
import copy
import os
import signal
import subprocess
import sys

from minictr import signals
from minictr.runtime.state import parse_signal
from minictr.spec.edits import copy_document


def test_signal_numbers_are_signal_Signals():
    names = [n for n in dir(signal) if n.startswith("SIG")] + ["SIG", "SIGFOO", "SIGterm"]
    for name in names:
        want = int(signal.Signals[name]) if name in signal.Signals.__members__ else None
        assert signals.number(name) == want, name
    assert parse_signal("term") == signal.SIGTERM and parse_signal("9") == 9
    for bad in ("0", "65", "SIG", "FOO", "SIG_IGN", ""):
        assert signals.parse(bad) is None, bad


def test_copy_document_is_a_deep_copy():
    doc = {"a": [1, {"b": (2, {"c": None})}], "d": "x", "e": 1.5, "f": True}
    copied = copy_document(doc)
    assert copied == copy.deepcopy(doc)
    copied["a"][1]["b"][1]["c"] = 7
    assert doc["a"][1]["b"][1]["c"] is None


def test_run_path_modules_import_none_of_the_slow_standard_modules():
    """The modules `minictr run` imports (cli, api, the plan and the runtime) load no json,
    re, enum, signal.py, socket.py, shutil, copy, argparse or subprocess."""
    code = ("import sys; import minictr.cli, minictr.api, minictr.spec.builder, "
            "minictr.runtime.lifecycle, minictr.runtime.spawn, minictr.runtime.cleanup, "
            "minictr.runtime.idmap, minictr.monitor, "
            "minictr.image.store; "
            "print(sorted(m for m in ('json', 're', 'enum', 'signal', 'socket', 'shutil', "
            "'copy', 'argparse', 'subprocess', 'typing') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path += {sys.path!r}; " + code],
                         capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_cached_run_imports_no_collections_contextlib_or_functools():
    """What a plan-cache hit imports (cli, api, plancache, the runtime) loads neither
    collections (``collections.abc`` imports the whole package: ~1 ms; ``_collections_abc``,
    which the interpreter has loaded already, holds the same classes) nor contextlib and
    functools (~1 ms), nor operator.py (records.py takes itemgetter from _operator), nor
    termios and tty (only a run with a terminal relays one: runtime/process.py)."""
    code = ("import sys; import minictr.cli, minictr.api, minictr.plancache, "
            "minictr.runtime.lifecycle, minictr.runtime.spawn, minictr.runtime.cleanup, "
            "minictr.runtime.cgroups, minictr.runtime.process, minictr.runtime.rootfs, "
            "minictr.runtime.seccomp_cache, minictr.runtime.validate, minictr.spec.etcfiles; "
            "print(sorted(m for m in ('collections', 'contextlib', 'functools', 'operator', "
            "'termios', 'tty') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path += {sys.path!r}; " + code],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_run_program_is_popen_communicate():
    from minictr.runtime.idmap import which
    from minictr.runtime.syscalls import Syscalls

    kernel = Syscalls()
    sh = which("sh")
    big = b"x" * 300000                       # more than a pipe holds: written while reading
    assert kernel.run_program(sh, ["sh", "-c", "wc -c; echo err >&2; exit 3"], [], big, 10) \
        == (3, b"300000\nerr\n")
    code, out = kernel.run_program(sh, ["sh", "-c", "ls /proc/self/fd"], [], b"", 10)
    assert code == 0 and out.split() == [b"0", b"1", b"2", b"3"]     # 3: ls's own listing
    assert kernel.run_program(sh, ["sh", "-c", "echo $A"], ["A=1"], b"", 10) == (0, b"1\n")
    assert kernel.run_program(sh, ["sh", "-c", "kill -TERM $$"], [], b"", 10) == (143, b"")
    assert kernel.run_program(which("sleep"), ["sleep", "5"], [], b"", 1) == (None, b"")
    assert kernel.run_program("/nonexistent", ["x"], [], b"", 1)[0] == 127
    assert kernel.run_program("/etc/passwd", ["x"], [], b"", 1)[0] == 126
    assert which("sh") == shutil_which("sh")


def test_run_programs_runs_them_side_by_side(tmp_path):
    """The first waits for a file the second makes: one at a time, it would time out."""
    from minictr.runtime.idmap import which
    from minictr.runtime.syscalls import Syscalls

    sh, flag = which("sh"), tmp_path / "made-by-the-second"
    results = Syscalls().run_programs([
        (sh, ["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.01; done; echo saw it"], [], b""),
        (sh, ["sh", "-c", f"touch {flag}; exit 4"], [], b""),
        ("/nonexistent", ["x"], [], b"")], 20)
    assert results[:2] == [(0, b"saw it\n"), (4, b"")] and results[2][0] == 127


def shutil_which(name):
    import shutil

    return shutil.which(name)


def test_the_garbage_collector_is_off_only_for_a_warm_run(tmp_path, monkeypatch):
    """cli.entry turns the cyclic collector off; every command but run and exec turns it on
    again (a pull or a load may run long), and so does a run whose plan is not cached."""
    import gc

    from minictr import cli

    monkeypatch.setenv("MINICTR_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("MINICTR_STATE", str(tmp_path / "state"))
    try:
        gc.disable()
        assert cli.main(["images"]) == 0 and gc.isenabled()
        gc.disable()
        assert cli.main(["run", "--rm", "--pull", "never", "localhost/nosuch:1", "true"]) != 0
        assert gc.isenabled()                    # planning (here: a missing image) turned it on
    finally:
        gc.enable()
