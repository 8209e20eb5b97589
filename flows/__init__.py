"""Prefect flows that chain the stage functions of `stages/` (see flows/pipeline.py)."""
