"""Immutable records for the start path, without importing dataclasses.

``import dataclasses`` pulls in ``inspect`` (and with it ast, dis, tokenize...): about 15–20 ms
of every `minictr run`, more than the kernel work of starting a container (bench/README.md,
"Start cost"). The records on the run path are plain immutable field bundles: tuples with
named fields, as ``collections.namedtuple`` makes them (built here without its per-class
eval); this decorator keeps the dataclass-like class syntax for them:

    @record
    class Paths:
        store: str
        rootless: bool = False

        @property
        def containers(self) -> str: ...

Fields are the annotated names in order, defaults the class attributes; methods, properties and
classmethods are kept; ``_replace`` is ``dataclasses.replace``. A class may define
``_normalize(cls, values: dict) -> dict`` to convert or check its fields on construction (the
role of a frozen dataclass's ``__post_init__``). Instances are tuples: compare them only with
records of the same class, and never pass them to json as they are.
"""
from __future__ import annotations

from _operator import itemgetter  # operator.py is a pure-Python wrapper around it: 0.4 ms

_MISSING = object()


def record(cls):
    """The class as a tuple subclass with one read-only property per field. Built by hand
    rather than by collections.namedtuple, whose code generation (an eval per class) cost ~1 ms
    for the ~30 records a run defines; the behaviour is namedtuple's (tests/unit/test_records.py)."""
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {i: cls.__dict__[n] for i, n in enumerate(names) if n in cls.__dict__}
    first = min(defaults, default=len(names))
    if any(i not in defaults for i in range(first, len(names))):
        raise TypeError(f"{cls.__name__}: a field without a default follows one with a default")
    index = {n: i for i, n in enumerate(names)}
    kind = cls.__name__

    def bind(args: tuple, kwargs: dict) -> list:
        """Arguments to field values, with namedtuple's errors."""
        if len(args) > len(names):
            raise TypeError(f"{kind}() takes {len(names)} positional arguments but {len(args)} "
                            "were given")
        values = list(args) + [_MISSING] * (len(names) - len(args))
        for key, value in kwargs.items():
            i = index.get(key)
            if i is None:
                raise TypeError(f"{kind}() got an unexpected keyword argument {key!r}")
            if values[i] is not _MISSING:
                raise TypeError(f"{kind}() got multiple values for argument {key!r}")
            values[i] = value
        for i, value in enumerate(values):
            if value is _MISSING:
                if i not in defaults:
                    raise TypeError(f"{kind}() missing required argument: {names[i]!r}")
                values[i] = defaults[i]
        return values

    body = {k: v for k, v in cls.__dict__.items()
            if k not in names and k not in ("__dict__", "__weakref__", "__annotations__")}
    normalize = body.get("_normalize")
    if normalize is None:
        def __new__(klass, *args, **kwargs):
            return tuple.__new__(klass, bind(args, kwargs))
    else:
        def __new__(klass, *args, **kwargs):
            values = normalize.__get__(None, klass)(dict(zip(names, bind(args, kwargs))))
            return tuple.__new__(klass, bind((), values))

    def _make(klass, iterable):
        made = tuple.__new__(klass, iterable)
        if len(made) != len(names):
            raise TypeError(f"Expected {len(names)} arguments, got {len(made)}")
        return made

    def _replace(self, **changes):
        made = self._make(changes.pop(n, v) for n, v in zip(names, self))
        if changes:
            raise ValueError(f"Got unexpected field names: {list(changes)!r}")
        return made

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(
            f"{n}={v!r}" for n, v in zip(names, self)) + ")"

    body.update(
        __slots__=(), __new__=__new__, _fields=names, __match_args__=names,
        _field_defaults={names[i]: v for i, v in defaults.items()},
        _make=classmethod(_make), _replace=_replace, __repr__=__repr__,
        _asdict=lambda self: dict(zip(names, self)),
        __getnewargs__=lambda self: tuple(self),
        **{n: property(itemgetter(i), doc=f"Alias for field number {i}")
           for i, n in enumerate(names)})
    return type(cls.__name__, (tuple,), body)
