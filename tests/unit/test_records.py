"""minictr/records.py: a record behaves as the namedtuple of the same fields."""
import pickle
from collections import namedtuple

import pytest

from minictr.records import record


@record
class Point:
    x: int
    y: int = 2
    label: str = "p"

    @property
    def total(self) -> int:
        return self.x + self.y


@record
class Clamped:
    value: int

    @classmethod
    def _normalize(cls, values: dict) -> dict:
        return dict(values, value=max(0, values["value"]))


Reference = namedtuple("Point", ["x", "y", "label"], defaults=[2, "p"])


@pytest.mark.parametrize("args,kwargs", [((1,), {}), ((1, 3), {}), ((), {"x": 5}),
                                         ((1,), {"label": "q"}), ((1, 2, "z"), {})])
def test_construction_fields_and_methods_match_namedtuple(args, kwargs):
    mine, theirs = Point(*args, **kwargs), Reference(*args, **kwargs)
    assert tuple(mine) == tuple(theirs)
    assert repr(mine) == repr(theirs)
    assert mine._asdict() == theirs._asdict()
    assert tuple(mine._replace(y=9)) == tuple(theirs._replace(y=9))
    assert (mine.x, mine.y, mine.label) == (theirs.x, theirs.y, theirs.label)
    assert mine.total == mine.x + mine.y
    assert Point._fields == Reference._fields
    assert Point._field_defaults == Reference._field_defaults
    assert hash(mine) == hash(theirs) and mine == theirs


@pytest.mark.parametrize("args,kwargs", [((), {}), ((1, 2, 3, 4), {}), ((1,), {"x": 2}),
                                         ((1,), {"z": 2})])
def test_bad_arguments_are_type_errors_as_namedtuple(args, kwargs):
    with pytest.raises(TypeError):
        Reference(*args, **kwargs)
    with pytest.raises(TypeError):
        Point(*args, **kwargs)


def test_immutable_normalized_and_picklable():
    p = Point(1)
    with pytest.raises(AttributeError):
        p.x = 3
    with pytest.raises(ValueError):
        p._replace(nope=1)
    assert Clamped(-5).value == 0 and Clamped(value=7).value == 7
    assert pickle.loads(pickle.dumps(p)) == p
    assert Point._make([1, 2, "a"]) == Point(1, 2, "a")
    match p:
        case Point(x, y):
            assert (x, y) == (1, 2)


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError):
        @record
        class Bad:
            a: int = 1
            b: int
