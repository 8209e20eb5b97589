"""Errors a user can cause and fix, shared across layers: each stage's entry point turns them into
one `error:` line (exit 2) instead of a traceback, without importing the layer that raises them."""

from __future__ import annotations


class BudgetError(ValueError):
    """A budgets.yaml (or E_T.json) that is missing, unreadable, incomplete, or lacks a regime; a
    token budget a horizon cannot fit."""


class ModelError(ValueError):
    """A policy that cannot be used as configured: not found locally (offline), weights only in a
    pickle, a chat template that does not render in time, a sampling backend not installed."""


class DataError(ValueError):
    """Bad rows in a prompt dataset, a prompt file that is not text, or a damaged file between
    stages (a truncated eval.json). `problems` lists (split, row index, prompt_id or None,
    reason) for every bad row; the message names the first 10 and the total count."""

    def __init__(self, message: str, problems: list[tuple[str, int, str | None, str]]):
        super().__init__(message)
        self.problems = problems


class DatasetLoadError(RuntimeError):
    """The dataset could not be loaded through HF `datasets` (the message carries a hint)."""
