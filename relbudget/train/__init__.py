"""Train: pre-training of the built-in base policy, TRL's GRPOTrainer wired to the budget H (fixed,
a xi controller, per-prompt budgets, a xi-band prompt filter), the one training path of
train@REGIME, a sweep cell and an arm run (training), and an arm run itself (arms). It imports
relbudget.core and relbudget.measure."""
