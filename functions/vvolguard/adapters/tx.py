"""A PynamoDB TransactWrite that remembers what each operation was for, so a cancellation can be read.

PynamoDB sends condition checks, deletes, puts and updates grouped in that order, whatever order they
were added in; DynamoDB's cancellation reasons follow the sent order. This class keeps a label per
operation in the same grouped order and maps the reasons back to labels.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

DEFAULT = "extra"


class Cancellation(NamedTuple):
    """Why a transaction was cancelled: the labels whose condition failed, and whether any operation lost
    to a concurrent transaction (then retrying may succeed)."""

    failed: set[str]
    conflict: bool


class Tx(TransactWrite):
    """TransactWrite with a label on every operation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._labels: dict[str, list[str]] = {"check": [], "delete": [], "put": [], "update": []}

    def condition_check(self, model_cls, hash_key, range_key=None, condition=None, label: str = DEFAULT):  # type: ignore[override]
        super().condition_check(model_cls, hash_key, range_key=range_key, condition=condition)
        self._labels["check"].append(label)

    def delete(self, model, condition=None, *, add_version_condition: bool = True, label: str = DEFAULT):  # type: ignore[override]
        super().delete(model, condition=condition, add_version_condition=add_version_condition)
        self._labels["delete"].append(label)

    def save(self, model, condition=None, return_values=None, label: str = DEFAULT):  # type: ignore[override]
        super().save(model, condition=condition, return_values=return_values)
        self._labels["put"].append(label)

    def update(self, model, actions, condition=None, return_values=None, *, add_version_condition: bool = True,
               label: str = DEFAULT):  # type: ignore[override]
        super().update(model, actions, condition=condition, return_values=return_values,
                       add_version_condition=add_version_condition)
        self._labels["update"].append(label)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self._labels.values())

    def sent_labels(self) -> list[str]:
        """Labels in the order the operations were sent."""
        return self._labels["check"] + self._labels["delete"] + self._labels["put"] + self._labels["update"]

    def cancellation(self, exc: TransactWriteError) -> Cancellation:
        """What cancelled this transaction, read from ``exc``'s cancellation reasons."""
        labels = self.sent_labels()
        failed, conflict = set(), False
        for i, r in enumerate(exc.cancellation_reasons or []):
            if r is None:
                continue
            if r.code == "ConditionalCheckFailed" and i < len(labels):
                failed.add(labels[i])
            elif r.code == "TransactionConflict":
                conflict = True
        if exc.cause_response_code == "TransactionConflictException":
            conflict = True
        return Cancellation(failed, conflict)
