"""Naive sequential fine-tuning: the baseline every method is compared with. It uses no hook."""
from __future__ import annotations

from .base import Method

__all__ = ["Naive"]


class Naive(Method):
    """Sequential fine-tuning with no protection against forgetting: the baseline."""

    def first_task_as_naive(self, benchmark) -> bool:
        return True
