import sqlite3

import numpy as np
import pytest

from ragsweep.errors import ConfigError
from ragsweep.store import SCHEMA_VERSION, Store, migrate
from ragsweep.testset import Question


def test_embedding_cache_round_trip_and_key_space(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.put_embeddings("digest-a", [("h1", np.array([0.6, 0.8], dtype=np.float32))])
    assert np.allclose(store.cached_embeddings("digest-a", ["h1", "h2"])["h1"], [0.6, 0.8])
    assert store.cached_embeddings("digest-b", ["h1"]) == {}  # another model digest: another key space


def test_answers_are_committed_as_they_complete(tmp_path):
    path = tmp_path / "db.sqlite"
    store = Store(path)
    store.start_run("r1", {}, {}, {})
    store.add_questions("r1", [Question("q1", "Q?", "A", ("d1",))])
    store.put_answer("r1", "bm25", "llm", "q1", {"answer": "A", "exact_match": 1.0})
    # a second connection (another process after a crash) sees it without any close/commit call
    other = sqlite3.connect(path)
    assert other.execute("SELECT answer FROM answers").fetchall() == [("A",)]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_fresh_database_gets_current_schema_and_newer_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "db.sqlite")
    assert migrate(db) == 0
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert migrate(db) == SCHEMA_VERSION  # idempotent
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    with pytest.raises(ConfigError, match="schema version 99, newer than this ragsweep"):
        Store(tmp_path / "db.sqlite")


def test_a_stored_version_1_database_migrates_and_keeps_its_results(tmp_path):
    import shutil

    from conftest import REPO

    path = tmp_path / "ragsweep.sqlite"
    shutil.copy(REPO / "tests" / "data" / "ragsweep-v1.sqlite", path)  # written by ragsweep at schema 1
    store = Store(path)
    assert store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    run_id = store.latest_run_id()
    assert [row["answer"] for row in store.samples(run_id)] and store.judgements(run_id) == []
    store.put_judgement(run_id, "bm25", "smollm2-135m", "q1", "faithfulness", {"value": 1.0})
    assert store.judgements(run_id)[0]["value"] == 1.0
