"""One look-up-by-name helper for every table of named things in ``fnn``.

A :class:`Registry` is a read-only mapping from names to entries (activations,
losses, init schemes, optimizers, gradient methods, datasets). It also builds
parameterised entries from names of the form ``NAME(NUMBER)``, such as
``"leaky_relu(0.2)"`` or ``"huber(0.5)"``, and passes objects of its entry type
through. An unknown name raises one ``ValueError`` that lists the known ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """Named entries of one kind, looked up by :meth:`lookup`.

    Args:
      kind: what the entries are, for messages (``"activation"``).
      entries: name -> entry.
      factories: name -> function of one float that builds a parameterised entry,
        so that ``get("name(0.5)")`` returns ``factories["name"](0.5)``.
      entry_type: objects of this type are passed through by :meth:`lookup`.
      hint: added to the unknown-name message (e.g. how to bring your own).
    """

    def __init__(self, kind: str, entries: dict[str, T], *, factories: dict[str, Callable[[float], T]] | None = None,
                 entry_type: type | tuple[type, ...] | None = None, hint: str = ""):
        self.kind, self._entries, self.factories = kind, dict(entries), dict(factories or {})
        self.entry_type, self.hint = entry_type, hint

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def lookup(self, spec) -> T:
        """The entry named ``spec``, one built from ``"NAME(NUMBER)"``, or ``spec`` itself when it
        is already an entry. Raises one ``ValueError`` listing the known names for anything else.
        (``get`` keeps the ``Mapping`` meaning: plain names only, ``default`` when absent.)"""
        if self.entry_type is not None and isinstance(spec, self.entry_type):
            return spec
        if isinstance(spec, str):
            if spec in self._entries:
                return self._entries[spec]
            built = self._build(spec)
            if built is not None:
                return built
        forms = [f"'{name}(X)'" for name in self.factories]
        close = difflib.get_close_matches(str(spec).lower(), list(self._entries), n=1, cutoff=0.6)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        plural = self.kind + ("es" if self.kind.endswith("s") else "s")
        raise ValueError(
            f"Unknown {self.kind} {spec!r}{guess}. Known {plural}: {', '.join(sorted(self._entries))}"
            + (f" (or {', '.join(forms)})" if forms else "") + (f"; {self.hint}" if self.hint else "") + "."
        )

    def _build(self, spec: str) -> T | None:
        name, sep, rest = spec.partition("(")
        if not sep or not rest.endswith(")") or name not in self.factories:
            return None
        try:
            value = float(rest[:-1])
        except ValueError:
            raise ValueError(f"Bad {self.kind} parameter in {spec!r}: {rest[:-1]!r} is not a number.") from None
        return self.factories[name](value)
