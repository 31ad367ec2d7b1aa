"""Readings of the HCO update where the paper's algorithms and its prose part ways.

Printed, Algorithm 2 (SGD-HCO) rescales the mask twice on the unlabeled path (line 14 adds
g_U * phibar to the momentum, line 15 steps by m * phibar) and Algorithm 1 (AdamW-HCO) adds the
full refined direction u on top of u^L (line 19), so where the mask admits, an HCO step is two
to three times its base optimizer's. The prose reads more cautiously: "Aligned components may
refine the state, but cannot redefine it", the momentum is formed "solely from the labeled
gradient", and the gate is normalised "to maintain a consistent update magnitude". Each reading
below is one independent switch; the defaults reproduce the printed algorithm of each family.

``refine_mask`` (R1): how g_U enters the refined moment. ``"scaled"``: g_U * phibar (Algorithm 2
    line 14, the sgd-hco default); ``"binary"``: g_U * phi (Algorithm 1 line 12, the adam(w)-hco
    default). phibar = phi / s(phi) always gates the step itself.
``second_term`` (R3): the second step term. ``"refined"``: -lr phibar * u, the whole refined
    direction (printed); ``"increment"``: -lr phibar * (u - u^L), only the change that the
    admitted unlabeled gradient made to the trusted direction, so that with a zero g_U the step
    is exactly the base optimizer's. For SGD with ``double_decay=False`` the increment is
    g_U * gate; with line 14's second decay m - m^L would also hold -(1 - mu) m^L, which is no
    unlabeled increment, so that combination is refused.
``persist_refinement`` (R4): ``True`` (printed) keeps the refined moments as the optimizer state;
    ``False`` uses them for this step only and keeps the labeled-only moments m^L (and v^L), so
    the persistent state is "formed solely" from g_L.
``double_decay`` (R2, sgd-hco only): line 14's second beta-decay of the momentum within one step.

The fused Triton kernels implement the printed reading; any other reading runs the flat torch
path (``fused=None`` falls back to it, ``fused=True`` is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hco_cli.optim.masks import HyperparameterError

REFINE_MASKS: tuple[str, ...] = ("scaled", "binary")
SECOND_TERMS: tuple[str, ...] = ("refined", "increment")
READING_KEYS: tuple[str, ...] = ("refine_mask", "second_term", "persist_refinement")


@dataclass(frozen=True)
class Reading:
    """One reading of the hco update (see the module docstring)."""

    refine_mask: str
    second_term: str = "refined"
    persist_refinement: bool = True

    @property
    def binary_refinement(self) -> bool:
        return self.refine_mask == "binary"

    @property
    def increment(self) -> bool:
        return self.second_term == "increment"


def printed_refine_mask(family: str) -> str:
    """The mask with which g_U enters the moments in the family's printed algorithm."""
    return "scaled" if family == "sgd" else "binary"


def resolve_reading(variant: str, family: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate the reading options and fill the printed defaults (hco only).

    Returns the group entries: the three keys for hco, none for plain and co (which refuse
    any of them).
    """
    given = {k: v for k, v in options.items() if v is not None}
    if variant != "hco":
        if given:
            raise HyperparameterError(f"{', '.join(sorted(given))} appl(y/ies) only to the hco "
                                      "variants (sgd-hco, adam-hco, adamw-hco)")
        return {}
    resolved = {"refine_mask": given.get("refine_mask", printed_refine_mask(family)),
                "second_term": given.get("second_term", "refined"),
                "persist_refinement": given.get("persist_refinement", True)}
    check_reading(resolved)
    return resolved


def check_reading(group: dict[str, Any]) -> None:
    """Refuse unknown values and contradictory combinations of the reading options."""
    if group["refine_mask"] not in REFINE_MASKS:
        raise HyperparameterError(f"Invalid refine_mask: {group['refine_mask']!r} (choose one of "
                                  f"{', '.join(REFINE_MASKS)})")
    if group["second_term"] not in SECOND_TERMS:
        raise HyperparameterError(f"Invalid second_term: {group['second_term']!r} (choose one "
                                  f"of {', '.join(SECOND_TERMS)})")
    if not isinstance(group["persist_refinement"], bool):
        raise HyperparameterError(f"Invalid persist_refinement: {group['persist_refinement']!r} "
                                  "(must be True or False)")
    if group["second_term"] == "increment" and group.get("double_decay") is True:
        raise HyperparameterError(
            "second_term='increment' needs double_decay=False: with line 14's second decay the "
            "refined momentum minus m^L holds -(1 - momentum) m^L, which is no unlabeled increment")


def reading_of(group: dict[str, Any]) -> Reading:
    """The :class:`Reading` of an hco parameter group."""
    return Reading(refine_mask=group["refine_mask"], second_term=group["second_term"],
                   persist_refinement=group["persist_refinement"])


def is_printed(group: dict[str, Any], family: str) -> bool:
    """True when an hco group uses its family's printed algorithm (what the fused kernels do)."""
    return (group["refine_mask"] == printed_refine_mask(family)
            and group["second_term"] == "refined" and group["persist_refinement"] is True)


def fused_reading_obstacle(group: dict[str, Any], family: str) -> str | None:
    """Why the fused kernels cannot run an hco group's reading (they run the printed one)."""
    if group.get("variant") != "hco" or is_printed(group, family):
        return None
    return ("the fused kernels implement the printed reading only; refine_mask, second_term "
            "and persist_refinement run on the flat torch path (fused=False or None)")
