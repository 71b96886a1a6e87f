"""The method grammar: base names, modifiers, canonical names."""
from __future__ import annotations

import itertools
from dataclasses import dataclass


BASES = ("deterministic", "mc_dropout", "tta", "ensemble", "checkpoint_ensemble", "auxiliary")


MODIFIERS = ("tta", "ts")


# the methods the demo and `python -m core run` use by default
METHODS = ("deterministic", "mc_dropout")


DEMO_METHODS = ("deterministic", "deterministic+ts", "mc_dropout", "tta", "ensemble", "checkpoint_ensemble",
                "checkpoint_ensemble+tta+ts", "auxiliary")


FLIPS = tuple(tuple(d for d, on in zip((2, 3, 4), bits) if on) for bits in itertools.product((0, 1), repeat=3))


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name: its base (:data:`BASES`) and whether it has the ``+tta`` / ``+ts`` modifiers."""
    base: str
    tta: bool = False
    ts: bool = False

    @property
    def name(self) -> str:
        """The canonical name: base, ``+tta`` (not repeated for the ``tta`` base), ``+ts``."""
        return self.base + ("+tta" if self.tta and self.base != "tta" else "") + ("+ts" if self.ts else "")


def parse_method(name: str) -> MethodSpec:
    """``"checkpoint_ensemble+tta+ts"`` -> MethodSpec; ``deterministic+tta`` is the ``tta`` base.

    Args:
        name: a method name: a base, then modifiers (``+tta``, ``+ts``) in any order.

    Returns:
        the spec.

    Raises:
        ValueError: naming what is wrong (unknown base, unknown or repeated modifier, a modifier on
            ``auxiliary``).
    """
    parts = str(name).strip().split("+")
    base, mods = parts[0], parts[1:]
    if base not in BASES:
        raise ValueError(f"unknown method {name!r}: base must be one of {BASES}")
    bad = [m for m in mods if m not in MODIFIERS]
    if bad or len(set(mods)) != len(mods):
        raise ValueError(f"unknown or repeated modifier in {name!r}: modifiers are +tta and +ts")
    if base == "auxiliary" and mods:
        raise ValueError(f"{name!r}: the auxiliary method takes no modifier")
    tta = base == "tta" or "tta" in mods
    return MethodSpec("tta" if base == "deterministic" and tta else base, tta=tta, ts="ts" in mods)


def canonical_method(name: str) -> str:
    """The canonical form of a method name (base, ``+tta``, ``+ts``); raises ValueError as :func:`parse_method`."""
    return parse_method(name).name
