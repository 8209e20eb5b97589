"""Train: pre-training of the built-in base policy, TRL's GRPOTrainer wired to the budget H (fixed,
a xi controller, per-prompt budgets, a xi-band prompt filter), and the train-then-evaluate run of
a sweep cell or an arm. It imports relbudget.core and relbudget.measure."""
