"""Errors a user can cause and fix, shared across layers: each stage's entry point turns them into
one `error:` line (exit 2) instead of a traceback, without importing the layer that raises them."""

from __future__ import annotations


class BudgetError(ValueError):
    """A budgets.yaml (or E_T.json) that is missing, unreadable, incomplete, or lacks a regime; a
    token budget a horizon cannot fit."""


class ModelError(ValueError):
    """A policy that cannot be used as configured: not found locally (offline), weights only in a
    pickle, a chat template that does not render in time, a sampling backend not installed."""
