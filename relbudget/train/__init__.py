"""Train: pre-training of the built-in base policy, TRL's GRPOTrainer wired to the budget H (fixed,
a xi controller, per-prompt budgets, a xi-band prompt filter), the one training path of
a sweep cell (a named regime is the cells at its xi) and an arm run (training), and an arm run itself (arms). It imports
relbudget.core and relbudget.measure."""
