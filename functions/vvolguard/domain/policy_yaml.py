"""Reading a policy file's YAML (docs/policy-file.md), apart from the validator in vvolguard.domain.policy so
that PyYAML is imported only when a YAML file is read: the event handler's path never reads one
(docs/benchmarks.md#cold-start)."""
from __future__ import annotations

from typing import Any

import yaml

from vvolguard.domain.policy import _short
from vvolguard.errors import PolicyValidationError


def _at(mark: Any) -> str:
    """``line L, column C`` of a YAML mark (PyYAML counts from 0; people count from 1)."""
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where, what, and the context PyYAML gives (also with its place)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    problem = " ".join((exc.problem or "syntax error").split())
    text = f"{_at(exc.problem_mark)}: {problem}" if exc.problem_mark is not None else problem
    if exc.context:
        context = " ".join(exc.context.split())
        if exc.context_mark is not None and (exc.problem_mark is None or exc.context_mark.line != exc.problem_mark.line
                                             or exc.context_mark.column != exc.problem_mark.column):
            context += f" started at {_at(exc.context_mark)}"
        text += f" ({context})"
    return text[:300]


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases (no billion laughs); a key given twice in one mapping is a
    problem, recorded with its line and column (the first value is kept so the rest is still checked)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen = set()
        kept = []
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "mapping keys must be plain values", key_node.start_mark)
            if dup:
                name = key if isinstance(key, str) and len(key) <= 64 and key.isprintable() else _short(key)
                self.duplicates.append(f"{_at(key_node.start_mark)}: duplicate key {name!r} (the first one counts)")
                continue
            seen.add(key)
            kept.append((key_node, value_node))
        node.value = kept
        return super().construct_mapping(node, deep=deep)


def load_strict(text: str, name: str) -> tuple[Any, list[str]]:
    """(the document, the duplicate keys found) of YAML ``text``; a syntax error is the PolicyValidationError
    parse_policy_text raises, with its line and column."""
    try:
        loader = _StrictLoader(text)  # the reader refuses unprintable characters here already
        try:
            return loader.get_single_data(), loader.duplicates
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise PolicyValidationError([f"{name}: not valid YAML or JSON: {_yaml_problem(exc)}"]) from None
