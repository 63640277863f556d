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
