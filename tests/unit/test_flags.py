"""minictr/flags.py: the fast `run`/`pull` reader agrees with argparse built from the same table."""
import contextlib
import io
import random

import pytest

from minictr import cli, flags

PARSER = cli.build_parser()

VALUES = ["x", "busybox", "A=1", "/a:/b:ro", "512m", "1", "2.5", "0", "-1", "", "a b", "-",
          "true", "no", "maybe", "host", "private", "keep-id", "never", "--rm", "-e", "nofile=1:2"]
EXTRA = ["-it", "-ti", "-itd", "-id", "-iq", "-ie", "-eA=1", "-h", "--help", "--bogus", "--priv",
         "--rm=yes", "--name=", "--env=A=B", "--cpus=x", "--ipc=host", "--pull=sometimes",
         "--hpc", "--no-hpc", "--debug", "--version", "--", "-q", "-d", "--root", "--state=/s"]
WORDS = ["sh", "-c", "echo hi", "--rm", "-it", "--", "/bin/true", "-e", "x"]


def _option_strings(command="run"):
    out = []
    for names, kwargs in flags.COMMANDS[command][1] + flags.STORE:
        if names[0].startswith("-"):
            out += names
    return out


def _generate(rng: random.Random) -> list[str]:
    argv = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        argv += rng.choice([["--root", "/r"], ["--state", "/s"], ["--debug"], ["--root=/q"]])
    argv.append(rng.choice(["run"] * 20 + ["spec", "ps", "runx"]))
    options = _option_strings()
    for _ in range(rng.randrange(8)):
        if rng.random() < 0.15:
            argv.append(rng.choice(EXTRA))
            continue
        name = rng.choice(options)
        argv.append(name)
        if rng.random() < 0.9:
            argv.append(rng.choice(VALUES))
    if rng.random() < 0.95:
        argv.append(rng.choice(["bb", "docker.io/library/busybox:1", "oci:/x:y"]))
        argv += [rng.choice(WORDS) for _ in range(rng.randrange(4))]
    return argv


def _argparse(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            ns = PARSER.parse_args(argv)
        except SystemExit:
            return None
    got = vars(ns)
    got.pop("func", None)
    return got


def _generate_pull(rng: random.Random) -> list[str]:
    argv = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        argv += rng.choice([["--root", "/r"], ["--state", "/s"], ["--debug"], ["--root=/q"]])
    argv.append(rng.choice(["pull"] * 20 + ["push", "export", "pul"]))
    options = _option_strings("pull")
    for _ in range(rng.randrange(6)):
        r = rng.random()
        if r < 0.15:
            argv.append(rng.choice(EXTRA + ["--tls-verify=0", "-qo", "-o=x", "--output="]))
        elif r < 0.35:
            argv.append(rng.choice(["bb", "docker.io/library/busybox:1", "-", "x y"]))
        else:
            argv.append(rng.choice(options))
            if rng.random() < 0.9:
                argv.append(rng.choice(VALUES))
    return argv


@pytest.mark.parametrize("generate, seed, at_least", [(_generate, 15, 1000),
                                                     (_generate_pull, 16, 500)],
                         ids=["run", "pull"])
def test_generated_command_lines_parse_the_same_both_ways(generate, seed, at_least):
    # pull: options before and after the image, one image or none or two, values and flags
    rng = random.Random(seed)
    fast = 0
    for _ in range(5000):
        argv = generate(rng)
        mine = flags.parse_fast(argv)
        theirs = _argparse(argv)
        if mine is None:
            continue                   # argparse reads it: the same as before, by construction
        fast += 1
        assert theirs is not None, f"argparse refuses what parse_fast accepted: {argv}"
        assert vars(mine) == theirs, argv
    assert fast > at_least             # the fast path does read the common forms


@pytest.mark.parametrize("argv", [
    ["pull", "busybox"], ["pull", "-q", "--tls-verify=false", "--root", "/s", "reg:5000/a/b:1"],
    ["--root", "/r", "pull", "img", "--platform", "linux/arm64", "-o", "img.sqsh", "-q"],
])
def test_common_pull_forms_take_the_fast_path(argv):
    mine = flags.parse_fast(argv)
    assert mine is not None and mine.cmd == "pull"
    assert vars(mine) == _argparse(argv)


@pytest.mark.parametrize("argv", [
    ["pull"], ["pull", "a", "b"], ["pull", "-h", "img"], ["pull", "--bogus", "img"],
    ["pull", "--tls", "false", "img"], ["pull", "img", "--"], ["pull", "-qx", "img"],
])
def test_other_pull_forms_go_to_argparse(argv):
    assert flags.parse_fast(argv) is None


@pytest.mark.parametrize("argv", [
    ["run", "--rm", "busybox", "/bin/true"],
    ["run", "-it", "--name", "web", "-e", "A=1", "-v", "/a:/b", "img", "sh", "-c", "x --rm"],
    ["--root", "/r", "run", "--gpus", "all", "--cpus", "0.5", "--hpc", "img"],
    ["run", "--network=none", "--tls-verify", "false", "img", "--rm"],
])
def test_common_forms_take_the_fast_path(argv):
    mine = flags.parse_fast(argv)
    assert mine is not None
    assert vars(mine) == _argparse(argv)


@pytest.mark.parametrize("argv", [
    ["run", "--bogus", "img"], ["run", "--priv", "img"], ["run", "-h"], ["run"],
    ["run", "--cpus", "lots", "img"], ["run", "--ipc", "shared", "img"], ["run", "-eA=1", "img"],
    ["run", "--rm=1", "img"], ["run", "--name"], ["spec", "img"], ["run", "--", "img"],
])
def test_other_forms_go_to_argparse(argv):
    assert flags.parse_fast(argv) is None


def test_an_unknown_flag_is_an_error_that_names_it(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--bogus", "busybox"])
    assert exc.value.code == 125
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("argv, hint", [
    (["run", "--memroy", "1g", "busybox"], "did you mean --memory? see 'minictr run --help'"),
    (["images", "--formt", "json"], "did you mean --format? see 'minictr images --help'"),
    (["rnu", "busybox"], "did you mean run? see 'minictr --help'"),
    (["run", "--zzzzz", "busybox"], "hint: see 'minictr run --help'"),
])
def test_a_mistyped_flag_or_command_gets_the_nearest_as_a_hint(capsys, argv, hint):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 125
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[1] == f"minictr: hint: {hint}" if hint.startswith("did") else hint in err[1], err
