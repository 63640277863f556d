"""What people said, read line by line: judge-check items and labels of a run's samples, each bad line one error."""

import json

import pytest

from conftest import write_jsonl
from ragsweep.errors import InputError
from ragsweep.labels import load_judge_check_items, load_sample_labels

GOOD = {
    "id": "x1",
    "metric": "faithfulness",
    "question": "Where is Paris?",
    "contexts": ["Paris is in France."],
    "answer": "France",
    "reference": "France",
    "label": 1,
}


def test_items_keep_their_fields_and_labels(tmp_path):
    path = write_jsonl(
        tmp_path / "l.jsonl",
        [GOOD, {**GOOD, "id": "x2", "label": 0, "answer": "Spain"}, {**GOOD, "id": "x3", "metric": "answer_relevancy", "contexts": []}],
    )
    items = load_judge_check_items(path)
    assert [(i.id, i.metric, i.label, i.answer) for i in items] == [
        ("x1", "faithfulness", 1, "France"),
        ("x2", "faithfulness", 0, "Spain"),
        ("x3", "answer_relevancy", 1, "France"),
    ]
    assert items[0].judge_inputs() == {"user_input": "Where is Paris?", "response": "France", "retrieved_contexts": ["Paris is in France."]}
    assert items[2].judge_inputs() == {"user_input": "Where is Paris?", "response": "France"}  # no passages needed


def test_limit_takes_the_first_n_of_each_metric(tmp_path):
    rows = [{**GOOD, "id": f"{m}-{i}", "metric": m} for i in range(5) for m in ("faithfulness", "context_recall")]
    items = load_judge_check_items(write_jsonl(tmp_path / "l.jsonl", rows), limit=2)
    assert [i.id for i in items] == ["faithfulness-0", "context_recall-0", "faithfulness-1", "context_recall-1"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"metric": "bleu"}, "field 'metric' is 'bleu', not one of faithfulness"),
        ({"label": 2}, "field 'label' must be 1"),
        ({"label": True}, "field 'label' must be 1"),
        ({"label": "1"}, "field 'label' must be 1"),
        ({"contexts": []}, "field 'contexts' must be a non-empty list of passages"),
        ({"contexts": "Paris"}, "field 'contexts' must be list"),
        ({"answer": ""}, "field 'answer' is empty"),
        ({"question": None}, "missing field 'question'"),
    ],
)
def test_a_bad_item_is_one_line_naming_file_line_and_field(tmp_path, change, expected):
    path = write_jsonl(tmp_path / "l.jsonl", [GOOD, {**GOOD, "id": "x2", **change}])
    with pytest.raises(InputError) as error:
        load_judge_check_items(path)
    assert str(error.value).startswith(f"{path}:2: ") and expected in str(error.value) and "\n" not in str(error.value)


def test_a_duplicate_id_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [GOOD, GOOD])
    with pytest.raises(InputError, match=r":2: duplicate id 'x1'"):
        load_judge_check_items(path)


def test_invalid_json_names_its_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(InputError, match=r"l.jsonl:2: invalid JSON"):
        load_judge_check_items(path)


SAMPLES = {("bm25", "a", "q1"), ("bm25", "a", "q2")}
LABEL = {"embedding_model": "bm25", "llm": "a", "question_id": "q1", "metric": "faithfulness", "label": 0.5}


def test_sample_labels_are_read(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [LABEL, {**LABEL, "question_id": "q2", "label": 1}])
    assert [(x.question_id, x.label) for x in load_sample_labels(path, SAMPLES)] == [("q1", 0.5), ("q2", 1.0)]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"question_id": "q9"}, "no answered sample 'bm25' + 'a', question 'q9' in this run"),
        ({"llm": "zz"}, "no answered sample 'bm25' + 'zz'"),
        ({"label": 1.5}, "field 'label' must be a number from 0 to 1, got 1.5"),
        ({"label": "high"}, "field 'label' must be a number from 0 to 1"),
        ({"metric": "token_f1"}, "field 'metric' is 'token_f1'"),
    ],
)
def test_a_bad_sample_label_names_its_line(tmp_path, change, expected):
    path = write_jsonl(tmp_path / "s.jsonl", [LABEL, {**LABEL, **change}])
    with pytest.raises(InputError) as error:
        load_sample_labels(path, SAMPLES)
    assert str(error.value).startswith(f"{path}:2: ") and expected in str(error.value)


def test_nan_label_is_refused(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(LABEL).replace("0.5", "NaN") + "\n")
    with pytest.raises(InputError, match="from 0 to 1, got nan"):
        load_sample_labels(path, SAMPLES)
