import csv
import json

import pytest

from conftest import write_jsonl
from ragsweep.errors import InputError
from ragsweep.testset import load_corpus, load_questions


def test_loads_demo_data():
    from conftest import DEMO

    docs = load_corpus(DEMO / "corpus.jsonl")
    questions = load_questions(DEMO / "testset.jsonl", {d.id for d in docs}, limit=5)
    assert len(docs) == 319 and len(questions) == 5
    assert questions[0].reference_context_ids[0] in {d.id for d in docs}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "q9", "question": "Q?", "reference": "A"}', ":3: missing field 'reference_context_ids'"),
        (
            '{"id": "q9", "question": "Q?", "reference": "A", "reference_context_ids": ["nope"]}',
            ":3: field 'reference_context_ids' names 'nope', which is not in the corpus",
        ),
        ('{"id": "q1", "question": "Q?", "reference": "A", "reference_context_ids": ["d1"]}', ":3: duplicate question id 'q1'"),
        ('{"id": "q9", "question": "Q?", "reference": 5, "reference_context_ids": ["d1"]}', ":3: field 'reference' must be str, got int"),
        ('{"id": "q9", "question": "  ", "reference": "A", "reference_context_ids": ["d1"]}', ":3: field 'question' is empty"),
        (
            '{"id": "q9", "question": "Q?", "reference": "A", "reference_context_ids": "d1"}',
            ":3: field 'reference_context_ids' must be list, got str",
        ),
        ('{"id": "q9", broken', ":3: invalid JSON at column 14: Expecting property name enclosed in double quotes"),
        ('{"id": "q9', ":3: invalid JSON at column 8: Unterminated string"),
        ('{"id": "q9", "question": "Q?"', ":3: invalid JSON at column 30: Expecting ',' delimiter"),  # cut off: the end, not the next line
        ('["not", "an", "object"]', ":3: expected a JSON object, got list"),
        (
            '{"id": "q9", "question": "Why \\ud83d?", "reference": "A", "reference_context_ids": ["d1"]}',
            ":3: field 'question' holds a lone UTF-16 surrogate (\\ud83d) at character 5",
        ),
        (
            '{"id": "q9", "question": "Q?", "reference": "A", "reference_context_ids": ["d1", "\\udc00"]}',
            ":3: field 'reference_context_ids' holds a lone UTF-16 surrogate (\\udc00) at character 1",
        ),
    ],
)
def test_bad_question_line_names_file_line_and_field(tmp_path, tiny_corpus, tiny_testset, line, message):
    path = tiny_testset
    path.write_text(path.read_text() + line + "\n")
    ids = {d.id for d in load_corpus(tiny_corpus)}
    with pytest.raises(InputError) as caught:
        load_questions(path, ids)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_an_escaped_pair_is_one_character_and_half_a_pair_in_the_corpus_is_refused(tmp_path, tiny_testset):
    pair = write_jsonl(
        tmp_path / "q.jsonl", [{"id": "q1", "question": "Why \U0001f600?", "reference": "A", "reference_context_ids": ["d1"]}]
    )
    assert "\\ud83d\\ude00" in pair.read_text()  # written as an escape pair, as json.dumps does
    assert load_questions(pair, {"d1"})[0].question == "Why \U0001f600?"
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "d1", "title": "T", "text": "ok"}\n{"id": "d2", "title": "T", "text": "half \\ude00 a pair"}\n')
    with pytest.raises(InputError, match=r"c.jsonl:2: field 'text' holds a lone UTF-16 surrogate \(\\ude00\) at character 6"):
        load_corpus(corpus)


def test_duplicate_corpus_id(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "title": "", "text": "x"}, {"id": "a", "title": "", "text": "y"}])
    with pytest.raises(InputError, match=r"c.jsonl:2: duplicate corpus id 'a'"):
        load_corpus(path)


def test_empty_and_unsupported_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="the corpus is empty"):
        load_corpus(tmp_path / "empty.jsonl")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported format '.txt'"):
        load_corpus(tmp_path / "c.txt")


def test_limit_applies_after_validating_every_line(tiny_corpus, tiny_testset):
    tiny_testset.write_text(tiny_testset.read_text() + '{"id": "q3"}\n')
    with pytest.raises(InputError, match=":3: missing field"):
        load_questions(tiny_testset, {"d1", "d2", "d3"}, limit=1)


def test_csv_and_parquet(tmp_path, tiny_corpus):
    rows = [{"id": "q1", "question": "Capital of France?", "reference": "Paris", "reference_context_ids": '["d2"]'}]
    with (tmp_path / "t.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    questions = load_questions(tmp_path / "t.csv", {"d1", "d2", "d3"})
    assert questions[0].reference_context_ids == ("d2",)

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["q1", "q2"], "question": ["A?", "B?"], "reference": ["a", "b"], "reference_context_ids": [["d1"], ["zz"]]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t.parquet: row 2: field 'reference_context_ids' names 'zz'"):
        load_questions(tmp_path / "t.parquet", {"d1", "d2", "d3"})


@pytest.mark.parametrize("name, separator", [("t.csv", ","), ("t.csv", ";"), ("t.tsv", "\t")])
def test_csv_with_the_separator_its_header_uses(tmp_path, name, separator):
    """A spreadsheet in a comma-decimal locale saves with semicolons; read as commas, every line said 'missing field id'."""
    header = separator.join(["id", "question", "reference", "reference_context_ids"])
    (tmp_path / name).write_text(f'{header}\nq1{separator}"Where, exactly?"{separator}Paris{separator}d2|d1\n')
    [question] = load_questions(tmp_path / name, {"d1", "d2"})
    assert (question.id, question.question, question.reference_context_ids) == ("q1", "Where, exactly?", ("d2", "d1"))


def test_a_json_file_is_an_array_of_objects_or_json_lines(tmp_path):
    row = {"id": "q1", "question": "Q?", "reference": "A", "reference_context_ids": ["d1"]}
    (tmp_path / "array.json").write_text(json.dumps([row, {**row, "id": "q2"}], indent=2))
    assert [q.id for q in load_questions(tmp_path / "array.json", {"d1"})] == ["q1", "q2"]
    lines = write_jsonl(tmp_path / "lines.json", [row])  # what datasets.Dataset.to_json("x.json") writes
    assert [q.id for q in load_questions(lines, {"d1"})] == ["q1"]
    (tmp_path / "item.json").write_text(json.dumps([row, "q2"]))
    with pytest.raises(InputError, match=r"item.json: item 2: expected a JSON object, got str$"):
        load_questions(tmp_path / "item.json", {"d1"})
    (tmp_path / "cut.json").write_text('[\n  {"id": "q1",\n   "question": }\n]')
    with pytest.raises(InputError, match=r"cut.json:3: invalid JSON at column 16: Expecting value$"):
        load_questions(tmp_path / "cut.json", {"d1"})
