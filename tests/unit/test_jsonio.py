"""minictr/jsonio.py gives json.loads' and json.dumps' results, without importing json."""
import json
import random
import subprocess
import sys

import pytest

from minictr import jsonio


def _value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "none"] + (["list", "dict"] * 2 if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 7, 2**70, -(2**40), rng.randrange(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e300, 1e-7, 3.0, float("inf"), float("-inf"), 1 / 3])
    if kind == "str":
        return "".join(rng.choice(["a", "é", "\n", '"', "\\", "\u2028", "😀", "\x00", " ", "/"])
                       for _ in range(rng.randrange(6)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_value(rng, 4)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_generated_documents_round_trip_as_json_does():
    rng = random.Random(15)
    for _ in range(3000):
        value = _value(rng)
        for kwargs in ({}, {"sort_keys": True}, {"separators": (",", ":")}):
            text = jsonio.dumps(value, **kwargs)
            assert text == json.dumps(value, **kwargs)
            spaced = f" \n{text}\t\r "
            assert repr(jsonio.loads(spaced)) == repr(json.loads(spaced))
            assert repr(jsonio.loads(spaced.encode())) == repr(json.loads(spaced.encode()))


@pytest.mark.parametrize("text", ["", " ", "{", "[1,]", "1 2", "tru", '{"a" 1}', '"\x01"',
                                  "\ufeff1", "NaN x", '{"a": 1}}'])
def test_errors_are_json_errors_at_the_same_place(text):
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as mine:
        jsonio.loads(text)
    assert (mine.value.msg, mine.value.pos) == (theirs.value.msg, theirs.value.pos)


def test_what_json_cannot_hold_is_a_type_error():
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonio.dumps({"a": object()})
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        jsonio.dumps(loop)
    assert jsonio.dumps([1]) == "[1]"          # nothing left over from the failures


def test_it_does_not_import_json_or_re():
    code = ("import sys; from minictr import jsonio; jsonio.loads(jsonio.dumps({'a': [1.5]})); "
            "print(sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("text", ['{"a": }', "[1, 2", '"abc', '{"a" 1}', "{", "[tru]"])
def test_errors_before_json_is_imported_are_json_errors(text):
    """The C scanner finds JSONDecodeError in sys.modules only: with json not yet imported,
    a syntax error must still come out as JSONDecodeError (a ValueError), not SystemError."""
    code = ("import sys; from minictr import jsonio\n"
            "try:\n    jsonio.loads(sys.argv[1])\n"
            "except ValueError as err:\n    print(type(err).__name__, err.pos)")
    out = subprocess.run([sys.executable, "-S", "-c", code, text], capture_output=True,
                         text=True, env={"PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert out.stdout.split() == ["JSONDecodeError", str(theirs.value.pos)]

