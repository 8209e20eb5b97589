#!/usr/bin/env bash
# Mutation-test one module against the fast test files that cover it, and print its score.
#
#   scripts/mutation.sh relbudget/report/compare.py            # the test files listed below
#   scripts/mutation.sh relbudget/core/io.py tests/test_x.py   # or name them
#
# Score = killed / non-equivalent mutants; the equivalent ones are those docs/testing.md lists
# (`relbudget.<module>.<function>__mutmut_<n>`, each with why). One child process: the machine's
# cores are shared. Survivors: `.venv/bin/mutmut show NAME`. Not in CI (minutes per module).
# MUTANTS="NAME ..." scripts/mutation.sh MODULE runs only those mutants (say, the survivors of the
# last full run, once new tests are in) and scores them alone.
set -euo pipefail
cd "$(dirname "$0")/.."
module=${1:?usage: scripts/mutation.sh relbudget/PATH/MODULE.py [TEST_FILE_OR_ID ...]}
shift
if [ ! -f "$module" ]; then
    echo "error: $module: no such module; give its path, e.g. relbudget/report/compare.py" >&2
    exit 2
fi

# The fast tests that exercise each module (files, or node ids where a file also holds a slow
# end-to-end test that adds minutes to every mutant and kills nothing more).
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    case "$module" in
        relbudget/report/compare.py)
            tests=(tests/test_exact_compare.py
                   tests/test_compare.py::test_tokens_to_target_interpolates_between_evaluations
                   tests/test_compare.py::test_target_ratio_and_a_plain_sentence_either_way
                   tests/test_compare.py::test_compare_reads_the_arm_files_and_names_missing_ones) ;;
        relbudget/report/headline.py)
            tests=(tests/test_exact_headline.py
                   tests/test_dvc_metrics.py::test_headline_is_a_few_numbers_rounded_and_byte_stable
                   tests/test_dvc_metrics.py::test_headline_skips_absent_parts_and_non_finite_numbers
                   tests/test_dvc_metrics.py::test_headline_keys_repeat_no_key_of_params) ;;
        relbudget/report/analysis.py)
            tests=(tests/test_exact_analysis.py
                   tests/test_report.py::test_cell_row_efficiency_and_xi_t_slope
                   tests/test_report.py::test_mean_and_standard_error_over_seeds
                   tests/test_report.py::test_peak_with_bootstrap_interval_over_seeds) ;;
        relbudget/measure/predict.py)  # all but its stage test (a pipeline run per mutant)
            tests=(tests/test_predict.py
                   --deselect tests/test_predict.py::test_xi_stage_and_cli_predict_on_real_rollouts) ;;
        relbudget/measure/estimators.py)  # but three slow ones (a 300-replicate coverage run,
            # a 1e6-attempt check of synth itself, and one that imports the GRPO trainer)
            tests=(tests/test_exact_estimators.py tests/test_estimators.py tests/test_gamma.py
                   tests/test_rewards.py
                   --deselect tests/test_estimators.py::test_bootstrap_ci_coverage_and_runtime
                   --deselect tests/test_estimators.py::test_truth_matches_big_monte_carlo
                   --deselect tests/test_rewards.py::test_grpo_reward_of_budget) ;;
        relbudget/train/prompt_budgets.py)  # test_adaptive_budgets.py trains a model: too slow
            tests=(tests/test_exact_prompt_budgets.py) ;;
        relbudget/measure/budgets.py)
            tests=(tests/test_exact_budgets.py
                   tests/test_reliability.py::test_budgets_round_trip_and_bytes
                   tests/test_reliability.py::test_damaged_budgets_name_file_and_field
                   tests/test_reliability.py::test_tiny_xi_warns_with_numbers
                   tests/test_reliability.py::test_unreachable_token_budget_is_refused) ;;
        relbudget/core/schemas.py)  # the readers: the lean reader against pandera, the checks
            tests=(tests/test_exact_schemas.py
                   tests/test_properties.py::test_lean_reader_agrees_with_the_schema
                   tests/test_estimators.py::test_read_rollouts_matches_read_table
                   tests/test_sweep_eval.py tests/test_exact_evaluation.py
                   tests/test_reliability.py::test_missing_prompt_column_names_it
                   tests/test_planted_bugs.py::test_rollout_schema_rejects_the_failing_row) ;;
        relbudget/report/tasks.py)  # the verdict's fast tests, not the temp-repo pipeline runs
            tests=(tests/test_exact_tasks_report.py
                   tests/test_tasks.py::test_peaks_at_one_xi_align_in_xi_not_in_H
                   tests/test_tasks.py::test_peaks_at_one_H_align_in_H_not_in_xi
                   tests/test_tasks.py::test_a_tasks_prediction_is_scored_against_its_own_sweep
                   tests/test_tasks.py::test_overlapping_intervals_share_a_value) ;;
        relbudget/measure/evaluation.py)  # its sampling pass: test_eval_horizons.py (a policy)
            tests=(tests/test_exact_evaluation.py tests/test_sweep_eval.py
                   tests/test_eval_horizons.py) ;;
        relbudget/measure/task.py)  # not test_tasks.py's pipeline runs
            tests=(tests/test_exact_task.py tests/test_task_retry.py
                   tests/test_tasks.py::test_tasks_by_carry_columns_order_E_T
                   tests/test_tasks.py::test_a_task_too_narrow_for_its_prompts_is_refused) ;;
        relbudget/train/controller.py)  # not the Gamma bias runs (5 s each) nor the GRPO run
            tests=(tests/test_exact_controller.py
                   tests/test_trl_plugin.py::test_estimator_edge_cases
                   tests/test_trl_plugin.py::test_controller_clamps_and_smooths
                   tests/test_properties.py::test_controller_H_stays_within_its_clamp) ;;
        relbudget/measure/verify.py)  # the checker, the task that calls it, the gold readers
            tests=(tests/test_exact_verify.py tests/test_verify.py tests/test_exact_task.py
                   tests/test_task_retry.py tests/test_datasets_io.py) ;;
        relbudget/measure/metrics.py)  # the efficiency and final xi_t definitions
            tests=(tests/test_exact_analysis.py tests/test_report.py) ;;
        relbudget/report/prediction.py)  # all but the stage test (a pipeline run per mutant)
            tests=(tests/test_exact_prediction.py tests/test_predict.py
                   --deselect tests/test_predict.py::test_xi_stage_and_cli_predict_on_real_rollouts) ;;
        relbudget/report/study.py)  # the report's one call, on hand-made inputs
            tests=(tests/test_exact_study.py) ;;
        relbudget/report/render.py)  # the page's words and tables
            tests=(tests/test_exact_study.py tests/test_report.py tests/test_exact_analysis.py tests/test_exact_tasks_report.py
                   tests/test_predict.py
                   --deselect tests/test_predict.py::test_xi_stage_and_cli_predict_on_real_rollouts) ;;
        relbudget/core/errors.py)  # the errors' messages and rows, where the layers raise them
            tests=(tests/test_exact_analysis.py tests/test_exact_budgets.py
                   tests/test_datasets_io.py) ;;
        relbudget/core/paths.py)  # every stage's files against dvc.yaml's, through DVC's loader
            tests=(tests/test_exact_paths.py
                   tests/test_interfaces.py::test_data_files_are_those_paths_declares) ;;
        relbudget/measure/datasets.py)  # local files and HF loaders, their row refusals
            tests=(tests/test_exact_datasets.py tests/test_datasets_io.py
                   tests/test_reliability_inputs.py::test_a_bad_local_jsonl_names_the_file_and_line) ;;
        *)
            echo "error: $module: no test files listed for it in scripts/mutation.sh; name them" \
                 "after the module (scripts/mutation.sh $module tests/test_x.py ...)" >&2
            exit 2 ;;
    esac
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
# A fresh mutants/ each time: its cache is keyed on the config, which this script varies.
rm -rf mutants
.venv/bin/python - "$module" "${tests[@]}" <<'PY'
import os
import sys

from mutmut.__main__ import cli
from mutmut.configuration import config

module, tests = sys.argv[1], sys.argv[2:]
cfg = config()  # [tool.mutmut] of pyproject.toml, narrowed to this module and its tests
cfg.only_mutate = [module]
cfg.pytest_add_cli_args_test_selection = tests
# MUTANTS="name ...": run only these (e.g. the survivors of the last full run, after new tests)
cli(["run", "--max-children", "1", *os.environ.get("MUTANTS", "").split()], standalone_mode=False)
PY
.venv/bin/python - "$module" <<'PY'
import json
import re
import sys
from pathlib import Path

module = sys.argv[1]
prefix = module.removesuffix(".py").replace("/", ".") + "."
meta = json.loads(Path("mutants", module + ".meta").read_text())["exit_code_by_key"]
meta = {k: c for k, c in meta.items() if c is not None}  # those run (all, unless MUTANTS)
notes = Path("docs/testing.md")
notes = notes.read_text() if notes.exists() else ""
equivalent = set(re.findall(r"`(" + re.escape(prefix) + r"\w+__mutmut_\d+)`", notes))
killed = [k for k, c in meta.items() if c in (1, 3, 36, 24, 152, 255, -24)]
survived = sorted((k for k in meta if k not in killed and k not in equivalent),
                  key=lambda k: (k.rsplit("__mutmut_", 1)[0], int(k.rsplit("_", 1)[1])))
counted = len(meta) - len(equivalent & set(meta))
for k in survived:
    print(f"survived: {k} ({meta[k]})")
print(f"mutation: {module}: {len(killed)} / {counted} killed = "
      f"{100 * len(killed) / max(counted, 1):.1f}% ({len(equivalent & set(meta))} equivalent, "
      f"{len(survived)} survived)")
PY
