"""Immutable records for the start path, without importing dataclasses.

``import dataclasses`` pulls in ``inspect`` (and with it ast, dis, tokenize...): about 15–20 ms
of every `minictr run`, more than the kernel work of starting a container (bench/README.md,
"Start cost"). The records on the run path are plain immutable field bundles, which
``collections.namedtuple`` provides at a fraction of the cost; this decorator keeps the
dataclass-like class syntax for them:

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

from collections import namedtuple

_MISSING = object()


def record(cls):
    names = list(cls.__dict__.get("__annotations__", {}))
    defaults = [cls.__dict__.get(n, _MISSING) for n in names]
    first = next((i for i, d in enumerate(defaults) if d is not _MISSING), len(names))
    if any(d is _MISSING for d in defaults[first:]):
        raise TypeError(f"{cls.__name__}: a field without a default follows one with a default")
    base = namedtuple(cls.__name__, names, defaults=defaults[first:] or None)
    body = {k: v for k, v in cls.__dict__.items()
            if k not in names and k not in ("__dict__", "__weakref__", "__annotations__")}
    body["__slots__"] = ()
    normalize = body.get("_normalize")
    if normalize is not None:
        def __new__(klass, *args, **kwargs):
            values = base.__new__(klass, *args, **kwargs)._asdict()
            return base.__new__(klass, **normalize.__get__(None, klass)(values))

        body["__new__"] = __new__
    return type(cls.__name__, (base,), body)
