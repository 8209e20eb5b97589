"""Measure: the task and datasets, answer verification, the policy models, sampling (HF or vLLM),
the estimators of E[T] and xi, the budgets per regime, evaluation, and the metrics every trained
policy is measured by. It imports only relbudget.core."""
