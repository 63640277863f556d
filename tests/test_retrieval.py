from ragsweep.retrieval import chunk_documents
from ragsweep.testset import Document


def test_short_documents_stay_whole_with_their_title():
    chunks = chunk_documents([Document("d1", "Cats", "cats purr")], size=10, overlap=2)
    assert [(c.id, c.doc_id, c.text) for c in chunks] == [("d1", "d1", "Cats: cats purr")]


def test_long_documents_split_into_overlapping_windows():
    words = [f"w{i}" for i in range(25)]
    chunks = chunk_documents([Document("d", "", " ".join(words))], size=10, overlap=3)
    assert [c.id for c in chunks] == ["d#0", "d#1", "d#2", "d#3"]
    assert chunks[0].text.split() == words[0:10]
    assert chunks[1].text.split() == words[7:17]  # 3 words shared with the previous window
    assert chunks[-1].text.split()[-1] == "w24"  # nothing lost at the end
    assert {c.doc_id for c in chunks} == {"d"}


def test_demo_passages_fit_whole_with_default_chunking():
    from conftest import DEMO
    from ragsweep.config import Settings
    from ragsweep.testset import load_corpus

    settings = Settings()
    docs = load_corpus(DEMO / "corpus.jsonl")
    assert len(chunk_documents(docs, settings.chunk_size, settings.chunk_overlap)) == len(docs)


def test_chinese_text_is_split_by_characters_and_keeps_its_own_text():
    """Without spaces a Chinese document was one 'word', so one chunk however long: every prompt overflowed the context."""
    text = "北京是中华人民共和国的首都。" * 10  # 140 characters, 10 of them punctuation
    chunks = chunk_documents([Document("z", "", text)], size=50, overlap=10)
    assert len(chunks) == 4 and all(c.text in text for c in chunks)  # windows of the text itself: no spaces put in
    assert [len(c.text) for c in chunks[:3]] == [50, 50, 50] and chunks[1].text.startswith(chunks[0].text[-10:])
    assert text.endswith(chunks[-1].text)


def test_a_run_without_spaces_is_split_and_line_breaks_stay():
    chunks = chunk_documents([Document("b", "", "x" * 1000)], size=10, overlap=0)
    assert [len(c.text) for c in chunks] == [160] * 6 + [40]  # 16 characters count as a word
    lines = chunk_documents([Document("t", "", "| a | b |\n| 1 | 2 |\n" * 20)], size=15, overlap=0)
    assert lines[0].text == "| a | b |\n| 1 | 2 |\n| a | b |"


def test_bm25_finds_chinese_passages(monkeypatch, tmp_path):
    """bm25s's default pattern made each Chinese sentence one term, so no question matched any passage."""
    import csv
    import json

    import benchmark
    from cli import latest_run_dir
    from echo_backend import EchoBackend
    from ragsweep import backends

    monkeypatch.setitem(backends.BACKENDS, "echo", EchoBackend)
    passages = {
        "beijing": "北京是中华人民共和国的首都，也是全国的政治中心。",
        "panda": "大熊猫生活在四川的山区，主要以竹子为食。",
        "tea": "龙井茶产于杭州西湖一带，是著名的绿茶。",
        "river": "长江是中国最长的河流，流经十一个省份。",
    }
    questions = {"beijing": "中国的首都是哪里？", "panda": "大熊猫吃什么？", "tea": "龙井茶产于哪里？", "river": "中国最长的河流是什么？"}
    corpus, testset = tmp_path / "corpus.jsonl", tmp_path / "testset.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "title": i, "text": t}, ensure_ascii=False) + "\n" for i, t in passages.items()))
    rows = [{"id": f"q-{i}", "question": q, "reference": i, "reference_context_ids": [i]} for i, q in questions.items()]
    testset.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    args = ["--backend", "echo", "--llms", "echo-llm", "--embeddings", "bm25", "--top-k", "1", "--judge", "none", "--quiet"]
    assert benchmark.main([*args, "--corpus", str(corpus), "--testset", str(testset), "--results-dir", str(tmp_path / "r")]) == 0
    samples = list(csv.DictReader((latest_run_dir(tmp_path / "r") / "samples.csv").open(encoding="utf-8")))
    assert {s["question_id"]: s["retrieved_ids"] for s in samples} == {f"q-{i}": i for i in passages}
