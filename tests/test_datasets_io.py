"""Loading prompts through HF `datasets` from local JSONL / parquet / CSV files."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from relbudget.measure import datasets as datasets_io
from relbudget.measure.datasets import DataError, DatasetLoadError, load_hf_prompts
from relbudget.core.params import HFSource
from relbudget.core.schemas import PROMPTS, validate
from relbudget.measure.verify import verify


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _gsm8k_rows(n):
    return [{"question": f"Tom has {i} apples and buys {i + 1} more. How many?",
             "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1:,}"} for i in range(n)]


def test_gsm8k_jsonl_carved_eval(tmp_path):
    rows = _gsm8k_rows(30)
    rows[7]["answer"] = "big sum\n#### 1,234,567"
    src = HFSource(path=_jsonl(tmp_path / "gsm8k.jsonl", rows),
                   prompt_template="Question: {prompt}\nAnswer:")
    train, ev = load_hf_prompts(src, n_train=20, n_eval=5, seed=3)
    assert len(train) == 20 and len(ev) == 5
    assert set(train.prompt_id).isdisjoint(ev.prompt_id)
    for df in (train, ev):
        validate(df, PROMPTS)
        assert list(df.columns[:5]) == ["prompt_id", "prompt", "answer", "answer_format", "level"]
        assert (df.answer_format == "gsm8k").all() and (df.level == 0).all()
        assert df.level.dtype == "int64"
    both = pd.concat([train, ev]).set_index("prompt_id")
    for pid, row in both.iterrows():
        i = int(pid.removeprefix("train-"))
        assert row.prompt == f"Question: {rows[i]['question']}\nAnswer:"
        assert row.answer == ("1234567" if i == 7 else str(2 * i + 1))  # commas removed
        # the gold answers round-trip through the verifier
        assert verify(f"so #### {row.answer}\n", row.answer, "gsm8k", False).final_correct
    # seeded: same seed, same split; another seed, another one
    again = load_hf_prompts(src, n_train=20, n_eval=5, seed=3)
    assert list(again[0].prompt_id) == list(train.prompt_id)
    assert list(again[1].prompt_id) == list(ev.prompt_id)
    other = load_hf_prompts(src, n_train=20, n_eval=5, seed=4)
    assert list(other[1].prompt_id) != list(ev.prompt_id)
    # the carved eval set does not depend on n_train
    assert list(load_hf_prompts(src, n_train=3, n_eval=5, seed=3)[1].prompt_id) \
        == list(ev.prompt_id)


def test_math_jsonl_with_ids_and_eval_file(tmp_path):
    train_rows = [
        {"problem": "Compute $\\sin 30^\\circ$.", "unique_id": "p/1",
         "solution": "We know $\\sin 30^\\circ = \\boxed{\\frac{1}{2}}$."},
        {"problem": "Find $\\cos 30^\\circ$.", "unique_id": "p/2",
         "solution": "Try \\boxed{1}, no: it is $\\boxed{\\frac{\\sqrt{3}}{2}}$."},
        {"problem": "Solve $x+1=3$.", "unique_id": "p/3", "solution": "2"},  # bare answer
    ]
    eval_rows = [{"problem": "Set?", "unique_id": "e/1", "solution": "$\\boxed{\\{1,2\\}}$"}]
    src = HFSource(path=_jsonl(tmp_path / "math.jsonl", train_rows),
                   eval_split=_jsonl(tmp_path / "math_test.jsonl", eval_rows),
                   prompt_column="problem", answer_column="solution", id_column="unique_id",
                   answer_format="math",
                   prompt_template="{prompt}\nPut the final answer in \\boxed{{}}.")
    train, ev = load_hf_prompts(src, n_train=10, n_eval=10, seed=0, keep_raw=True)
    got = dict(zip(train.prompt_id, train.answer))
    assert got == {"p/1": "\\frac{1}{2}", "p/2": "\\frac{\\sqrt{3}}{2}", "p/3": "2"}
    assert list(ev.prompt_id) == ["e/1"] and ev.answer.iloc[0] == "\\{1,2\\}"
    assert train.prompt.str.endswith("\\boxed{}.").all()
    assert "raw_answer" in train.columns and (train.answer_format == "math").all()
    assert verify("so \\boxed{0.5}", got["p/1"], "math", True).final_correct


def test_parquet_and_csv_int_answers(tmp_path):
    df = pd.DataFrame({"q": [f"{a}+{a}=" for a in range(12)], "a": [2 * a for a in range(12)],
                       "id": list(range(100, 112))})
    df.to_parquet(tmp_path / "sums.parquet")
    df.to_csv(tmp_path / "sums.csv", index=False)
    for name in ("sums.parquet", "sums.csv"):
        src = HFSource(path=str(tmp_path / name), prompt_column="q", answer_column="a",
                       id_column="id", answer_format="int")
        train, ev = load_hf_prompts(src, n_train=8, n_eval=4, seed=1)
        assert len(train) == 8 and len(ev) == 4
        both = pd.concat([train, ev])
        assert sorted(both.prompt_id) == [str(i) for i in range(100, 112)]
        for pid, ans in zip(both.prompt_id, both.answer):
            assert ans == str(2 * (int(pid) - 100))


def test_missing_column_names_it_and_the_available_ones(tmp_path):
    src = HFSource(path=_jsonl(tmp_path / "g.jsonl", _gsm8k_rows(3)), prompt_column="problem")
    with pytest.raises(ValueError, match=r"'problem'.*available columns: question, answer"):
        load_hf_prompts(src, 2, 1, 0)
    src = HFSource(path=_jsonl(tmp_path / "g.jsonl", _gsm8k_rows(3)), id_column="uid")
    with pytest.raises(ValueError, match=r"id_column: column 'uid'"):
        load_hf_prompts(src, 2, 1, 0)


def test_bad_rows_raise_data_error_naming_them(tmp_path):
    rows = _gsm8k_rows(8)
    for r, i in zip(rows, range(8)):
        r["id"] = f"q{i}"
    rows[1]["question"] = "   "                      # empty prompt
    rows[2]["answer"] = "I think it is twelve"        # no '#### n'
    rows[3]["answer"] = None                          # missing answer
    rows[4]["id"] = "q0"                              # duplicate id
    rows[5]["question"] = 17                          # wrong type
    rows[6]["answer"] = "#### NaN"                    # unparseable
    src = HFSource(path=_jsonl(tmp_path / "bad.jsonl", rows), id_column="id")
    with pytest.raises(DataError) as info:
        load_hf_prompts(src, 4, 2, 0)
    msg = str(info.value)
    assert msg.startswith("6 bad row(s) in ")
    for needle in ("train row 1 (id 'q1'): empty prompt",
                   "train row 2 (id 'q2'): unparseable gsm8k answer",
                   "train row 3 (id 'q3'): missing answer",
                   "train row 4 (id 'q0'): duplicate id 'q0' (first at row 0)",
                   "train row 5 (id 'q5'): prompt is int, expected str",
                   "train row 6 (id 'q6'): unparseable gsm8k answer"):
        assert needle in msg, msg
    assert [p[1] for p in info.value.problems] == [1, 2, 3, 4, 5, 6]
    assert isinstance(info.value, ValueError)


def test_many_bad_rows_are_capped_in_the_message(tmp_path):
    rows = [{"question": f"q{i}", "answer": "no marker"} for i in range(15)]
    src = HFSource(path=_jsonl(tmp_path / "bad.jsonl", rows))
    with pytest.raises(DataError) as info:
        load_hf_prompts(src, 4, 2, 0)
    msg = str(info.value)
    assert "train row 9 (id 'train-9')" in msg and "train row 10 " not in msg
    assert "... and 5 more (15 in total)" in msg and len(info.value.problems) == 15


def test_bad_math_and_missing_ids(tmp_path):
    rows = [{"problem": "p", "solution": "so \\boxed{1", "uid": "a"},
            {"problem": "p", "solution": "\\boxed{2}", "uid": None},
            {"problem": None, "solution": "\\boxed{3}", "uid": "c"}]
    src = HFSource(path=_jsonl(tmp_path / "m.jsonl", rows), prompt_column="problem",
                   answer_column="solution", id_column="uid", answer_format="math")
    with pytest.raises(DataError) as info:
        load_hf_prompts(src, 2, 1, 0)
    msg = str(info.value)
    assert "train row 0 (id 'a'): unparseable math answer: unclosed" in msg
    assert "train row 1: missing id" in msg
    assert "train row 2 (id 'c'): missing prompt" in msg


def test_source_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_hf_prompts(HFSource(path=str(tmp_path / "nope.jsonl")), 2, 1, 0)
    good = _jsonl(tmp_path / "g.jsonl", _gsm8k_rows(4))
    with pytest.raises(ValueError, match="does not contain"):
        load_hf_prompts(HFSource(path=good, prompt_template="no slot"), 2, 1, 0)
    with pytest.raises(ValueError, match="literal braces"):
        load_hf_prompts(HFSource(path=good, prompt_template="{prompt} \\boxed{}"), 2, 1, 0)
    with pytest.raises(ValueError, match="eval_split"):
        load_hf_prompts(HFSource(path=good, eval_split="test"), 2, 1, 0)
    with pytest.raises(DataError, match="at least 2"):
        load_hf_prompts(HFSource(path=_jsonl(tmp_path / "one.jsonl", _gsm8k_rows(1))), 2, 1, 0)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetLoadError, match="HF_DATASETS_OFFLINE") as info:
        load_hf_prompts(HFSource(path="openai/gsm8k", name="main", eval_split="test"), 2, 1, 0)
    assert "openai/gsm8k" in str(info.value) and "Couldn't reach" in str(info.value)
    assert datasets_io.OFFLINE_HINT in str(info.value)
