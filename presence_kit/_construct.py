"""Building frozen values on the hot path, at half the cost of their ``__init__``.

The public types are frozen, slotted dataclasses with keyword-only fields, and their
generated ``__init__`` sets each field through ``object.__setattr__`` (then runs any
``__post_init__`` validation). A handler call builds about ten of them from parts the
core has already validated; :func:`maker` gives, for one class, a positional function
that sets the slots directly and skips ``__post_init__``: the same object, made for
about 0.35 µs instead of 0.8 (five fields). Only for values whose parts are known good;
anything from outside goes through the class itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """``make(*values)``: a ``cls`` with its fields, in declaration order, set to
    ``values`` (every field given; no defaults, no validation)."""
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for name in names:
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__  # the slot's descriptor
    body = "".join(f"    _set_{name}(obj, {name})\n" for name in names)
    source = f"def make({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n"
    exec(source, namespace)
    make: Callable[..., T] = namespace["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    make.__doc__ = f"A {cls.__name__} from its fields, in order: {', '.join(names)}."
    return make
