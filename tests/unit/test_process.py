import os
import signal
import subprocess
import sys
import time

from minictr.runtime import process, state


def test_exit_codes():
    assert process.exit_code(7 << 8) == 7
    assert process.exit_code(signal.SIGKILL) == 137


def test_signal_masks_of_a_process_with_a_handler():
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal,time\nsignal.signal(signal.SIGUSR1, lambda *a: 0)\n"
                              "signal.signal(signal.SIGUSR2, signal.SIG_IGN)\n"
                              "print('ready', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        caught, ignored = process.signal_masks(child.pid)
        assert caught & (1 << (signal.SIGUSR1 - 1))
        assert ignored & (1 << (signal.SIGUSR2 - 1))
        assert not caught & (1 << (signal.SIGTERM - 1))
    finally:
        child.kill()
        child.wait()


def test_forwarding_applies_the_default_action_for_an_unhandled_signal():
    # A process that ignores nothing and catches nothing: forwarding SIGTERM kills it, and the
    # supervisor reports 128+SIGTERM even though it had to use SIGKILL.
    child = subprocess.Popen(["sleep", "30"])
    sup = process.Supervisor(child.pid)
    time.sleep(0.05)
    sup._forward(signal.SIGTERM, None)
    _, status = os.waitpid(child.pid, 0)
    assert sup._code(status) == 128 + signal.SIGTERM


def test_parse_signal():
    assert state.parse_signal("TERM") == signal.SIGTERM
    assert state.parse_signal("sigkill") == signal.SIGKILL
    assert state.parse_signal("9") == 9
