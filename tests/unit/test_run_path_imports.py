"""What the run path does without signal.py, copy and the rest (the start-latency work of
issue 15): the replacements give the standard modules' answers."""
import copy
import os
import signal
import subprocess
import sys

from minictr.runtime.state import parse_signal, signal_number
from minictr.spec.edits import copy_document


def test_signal_numbers_are_signal_Signals():
    names = [n for n in dir(signal) if n.startswith("SIG")] + ["SIG", "SIGFOO", "SIGterm"]
    for name in names:
        want = int(signal.Signals[name]) if name in signal.Signals.__members__ else None
        assert signal_number(name) == want, name
    assert parse_signal("term") == signal.SIGTERM and parse_signal("9") == 9


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
            "minictr.image.store; "
            "print(sorted(m for m in ('json', 're', 'enum', 'signal', 'socket', 'shutil', "
            "'copy', 'argparse', 'subprocess') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path += {sys.path!r}; " + code],
                         capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout
