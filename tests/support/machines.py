"""
Reading an automat machine's table, to check that every (state, input)
pair is either declared or listed as one that cannot happen.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def inputNames(inputs: type) -> set[str]:
    return {
        name
        for name, value in vars(inputs).items()
        if callable(value) and not name.startswith("_")
    }


def transitions(machine: Any) -> dict[tuple[str, str], str]:
    automaton = machine.__automat_automaton__
    return {
        (state.name, symbol): target.name
        for state, symbol, target, _ in automaton.allTransitions()
    }


def undeclared(machine: Any, inputs: type, states: list[str]) -> dict[str, set[str]]:
    """
    For each input, the states in which the machine does not declare it.
    """
    table = transitions(machine)
    missing: dict[str, set[str]] = defaultdict(set)
    for name in inputNames(inputs):
        for state in states:
            if (state, name) not in table:
                missing[name].add(state)
    return dict(missing)
