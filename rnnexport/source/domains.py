"""Where a module's state values lie, as the module declares it: ``state_domain()``.

Verification and packaging start some runs from a random state. Standard normal noise is
no state at all for a count, a denominator that must stay positive or a normaliser of at
least 1: the module then computes from a state it can never reach, and a graph that is
right may fail to match it. A module says where its state lies with a method (or attribute)
``state_domain``, giving for each state tensor:

- ``(low, high)``: numbers, either one None for an open bound (``(1, None)``: at least 1);
- ``"positive"`` (``(0, None)``) or ``"negative"`` (``(None, 0)``);
- None or ``"any"``: anywhere (standard normal, as for an undeclared state).

It is given as a dict by state name (as ``rnnexport inspect`` lists them; states left out
lie anywhere) or shaped like the state (a tuple, a dict of fields). The domains are recorded
in the state contract (:attr:`~rnnexport.core.contract.StateSpec.domains`), so a bundle's
test vectors are drawn inside them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rnnexport.core.contract import StateDomain, StateSpec
from rnnexport.core.errors import ContractError, SourceError, describe
from rnnexport.source.tree import shown

__all__ = ["DOMAIN_KINDS", "state_domains"]

#: The domains a module may name instead of giving bounds.
DOMAIN_KINDS = {"any": None, "positive": StateDomain(0.0, None), "negative": StateDomain(None, 0.0)}


def state_domains(module: torch.nn.Module, state: StateSpec, owner: str) -> tuple[StateDomain | None, ...] | None:
    """Each state tensor's declared domain (None: anywhere), or None when the module declares none.

    Raises:
        SourceError: ``state_domain`` fails, or gives something that is not one domain per
            state tensor (one line, naming the state).
    """
    declared = getattr(module, "state_domain", None)
    if declared is None:
        return None
    try:
        value = declared() if callable(declared) else declared
    except Exception as e:  # the user's method failing is a user error
        raise SourceError(f"{owner}.state_domain() failed: {describe(e)}") from e
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and k in state.names for k in value):
        leaves = [value.get(name) for name in state.names]
    else:
        try:
            leaves = state.flatten(value, f"{owner}.state_domain()")
        except ContractError as e:
            raise SourceError(f"{e}; give a dict by state name ({', '.join(state.names)}) or a value shaped like "
                              "the state") from e
    return tuple(_domain(leaf, name, owner) for leaf, name in zip(leaves, state.names, strict=True))


def _domain(value: Any, name: str, owner: str) -> StateDomain | None:
    if value is None:
        return None
    if isinstance(value, str) and value in DOMAIN_KINDS:
        return DOMAIN_KINDS[value]
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            return StateDomain(*value)
        except ContractError as e:
            raise SourceError(f"{owner}.state_domain() for state {name}: {e}") from e
    what = f"{value!r:.40}" if isinstance(value, (str, int, float)) else shown(value)
    raise SourceError(f"{owner}.state_domain() gives {what} for state {name}: give (low, high) (None for an "
                      f"open bound), {', '.join(repr(k) for k in DOMAIN_KINDS)} or None")
