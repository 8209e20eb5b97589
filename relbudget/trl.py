"""A TRL plug-in: per-step xi_t logging and an optional xi controller for a plain `GRPOTrainer`.

    from relbudget.trl import XiController

    ctrl = XiController(target_xi=1.75, every=5, h_min=16, h_max=512)   # target_xi=None: log only
    trainer = GRPOTrainer(model=..., args=GRPOConfig(max_completion_length=256, ...),
                          reward_funcs=ctrl.watch(my_reward),           # my_reward > 0 = correct
                          train_dataset=..., callbacks=[ctrl])
    ctrl.attach(trainer)
    trainer.train()
    ctrl.history          # one dict per step: H, E_T, xi_t, E_T_est, ...

The public import path for users' scripts. The implementation lives in
relbudget.train.controller (relbudget's own GRPO training uses the same class); its docstring
says what it measures, how it controls H, where the cap lives in TRL and where it cannot work.
"""

from relbudget.train.controller import (MIN_HITS, XiController, censored_mean_T,
                                        set_max_completion_length, xi_controller)

__all__ = ["MIN_HITS", "XiController", "censored_mean_T", "set_max_completion_length",
           "xi_controller"]
