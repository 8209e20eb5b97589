"""relbudget's xi controller in a plain TRL GRPO script (README: "Your own TRL script").

Runs in about a minute on one CPU thread: a tiny policy that sums one-digit numbers is
pre-trained for a few seconds, then GRPO runs with `XiController` holding xi = H / E_t[T] at 2.

    python examples/trl_xi_plugin.py
"""

from __future__ import annotations

import re
import tempfile

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from relbudget.measure.models import char_tokenizer, tiny_llama
from relbudget.core.params import defaults
from relbudget.train.pretrain import pretrain
from relbudget.measure.task import builtin_splits, trace_corpus
from relbudget.trl import XiController


def tiny_policy():
    """Stand-in for your model: a 2-layer Llama that sums one-digit numbers (~3 s to train)."""
    torch.manual_seed(0)
    tok = char_tokenizer()
    model = tiny_llama(tok, hidden=32, layers=2, heads=4, intermediate=64, max_position=128)
    p = defaults().base_policy.model_copy(update=dict(
        hidden_size=32, n_layers=2, n_heads=4, intermediate_size=64, max_position=128, steps=200,
        batch_size=64, lr=3e-3, threads=1))
    pretrain(model, tok, trace_corpus(60, [1], 2, seed=0), p, log_every=10**9)
    return model, tok


def correct(completions, answer, **kwargs) -> list[float]:
    """Your reward function: 1 if the first answer "A:<n>" in the completion is right."""
    out = []
    for text, gold in zip(completions, answer):
        m = re.search(r"A:(\d+)", text)
        out.append(1.0 if m and m.group(1) == str(gold) else 0.0)
    return out


def main(max_steps: int = 6):
    torch.set_num_threads(1)
    model, tok = tiny_policy()
    prompts, _ = builtin_splits(24, 4, [1], 2, seed=0)
    data = Dataset.from_dict({"prompt": list(prompts["prompt"]),
                              "answer": [str(a) for a in prompts["answer"]]})

    # --- the relbudget part: three lines -------------------------------------------------
    ctrl = XiController(target_xi=2.0, every=2, h_min=8, h_max=48)  # target_xi=None: only log
    trainer = GRPOTrainer(
        model=model, processing_class=tok, train_dataset=data,
        reward_funcs=ctrl.watch(correct),  # correct = reward > 0 (change with is_correct=...)
        callbacks=[ctrl],
        args=GRPOConfig(output_dir=tempfile.mkdtemp(), max_completion_length=40,
                        num_generations=4, per_device_train_batch_size=8, max_steps=max_steps,
                        learning_rate=1e-3, use_cpu=True, bf16=False, report_to="none",
                        logging_steps=1, save_strategy="no", disable_tqdm=True),
    )
    ctrl.attach(trainer)
    # ---------------------------------------------------------------------------------------
    trainer.train()
    for row in ctrl.history:  # also in TRL's logs (every report_to) as relbudget/H, /E_T, /xi_t
        print(f"step {row['step']}: H={row['H']} E_T={row['E_T']:.1f} xi_t={row['xi_t']:.2f} "
              f"-> next H={row['H_next']}")
    return ctrl


if __name__ == "__main__":
    main()
