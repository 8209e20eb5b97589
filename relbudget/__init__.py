"""relbudget: RLVR under a relative generation budget xi = H / E[T].

The library holds everything that is not orchestration: tasks and verifiers, sampling backends,
estimators, the budget planner, pandera schemas, TRL wiring, MLflow helpers and the CLI.
"""

__version__ = "0.1.0"
