"""One SQLite file (WAL) holds runs, their per-sample rows, the caches, events and the memory ledger.

Every finished unit of work is committed as it completes, so a crash loses at most the unit in
flight. Caches are keyed by content (model digest + exact inputs), one key space per stage: a
re-pulled model gets a new digest and only its own work is redone.
"""

from __future__ import annotations

import errno
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .errors import ConfigError, StorageError

SCHEMA_VERSION = 5
LOCK_TIMEOUT_S = 30  # how long a write waits for another program's lock on the database

# Numbered migrations: MIGRATIONS[n] takes a database from version n to n + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, started_at REAL, finished_at REAL, status TEXT,
        exit_code INTEGER, config_json TEXT, plan_json TEXT, platform_json TEXT
    );
    CREATE TABLE questions (
        run_id TEXT, question_id TEXT, position INTEGER, question TEXT, reference TEXT,
        reference_context_ids TEXT, PRIMARY KEY (run_id, question_id)
    );
    CREATE TABLE embedding_cache (
        model_digest TEXT, text_hash TEXT, vector BLOB, PRIMARY KEY (model_digest, text_hash)
    );
    CREATE TABLE answer_cache (
        key TEXT PRIMARY KEY, llm_digest TEXT, text TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
        seconds REAL, created_at REAL
    );
    CREATE TABLE retrievals (
        run_id TEXT, embedding_model TEXT, question_id TEXT, retrieved_ids TEXT, contexts TEXT,
        recall_at_k REAL, mrr REAL, ndcg_at_k REAL,
        PRIMARY KEY (run_id, embedding_model, question_id)
    );
    CREATE TABLE answers (
        run_id TEXT, embedding_model TEXT, llm TEXT, question_id TEXT, answer TEXT,
        prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, tokens_per_s REAL,
        exact_match REAL, token_f1 REAL, cached INTEGER, error TEXT, cause TEXT,
        PRIMARY KEY (run_id, embedding_model, llm, question_id)
    );
    CREATE TABLE events (run_id TEXT, seq INTEGER, t REAL, event TEXT, stage TEXT, model TEXT, data TEXT);
    CREATE TABLE memory (run_id TEXT, seq INTEGER, t REAL, stage TEXT, label TEXT, model TEXT, data TEXT);
    """,
    # v2: LLM-judged metrics. Only scores are cached (a failure is retried next time), keyed by
    # judge identity + parameters, metric and exact inputs: a key space apart from generation.
    """
    CREATE TABLE judge_cache (
        key TEXT PRIMARY KEY, judge TEXT, metric TEXT, value REAL, prompt_tokens INTEGER,
        completion_tokens INTEGER, cost_usd REAL, created_at REAL
    );
    CREATE TABLE judgements (
        run_id TEXT, embedding_model TEXT, llm TEXT, question_id TEXT, metric TEXT, value REAL,
        cause TEXT, message TEXT, cached INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER,
        cost_usd REAL, PRIMARY KEY (run_id, embedding_model, llm, question_id, metric)
    );
    """,
    # v3: judge repeats (--judge-repeats). Each cell may be judged several times, independently;
    # the repeat index joins the key. Existing judgements become repeat 0.
    """
    CREATE TABLE judgements_v3 (
        run_id TEXT, embedding_model TEXT, llm TEXT, question_id TEXT, metric TEXT, repeat INTEGER, value REAL,
        cause TEXT, message TEXT, cached INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER,
        cost_usd REAL, PRIMARY KEY (run_id, embedding_model, llm, question_id, metric, repeat)
    );
    INSERT INTO judgements_v3 SELECT run_id, embedding_model, llm, question_id, metric, 0, value, cause, message, cached,
        prompt_tokens, completion_tokens, cost_usd FROM judgements;
    DROP TABLE judgements;
    ALTER TABLE judgements_v3 RENAME TO judgements;
    """,
    # v4: many requests in flight. latency_s stays the model's own time; queued_s is the wait for a server slot, and
    # prompt_cut marks an answer whose prompt filled num_ctx (an older server cuts such a prompt silently).
    """
    ALTER TABLE answers ADD COLUMN queued_s REAL;
    ALTER TABLE answers ADD COLUMN prompt_cut INTEGER;
    """,
    # v5: can this judge be trusted? A judge check's per-metric table, kept against the judge's identity (every later
    # sweep by that identity shows it), and a person's labels of a run's samples (the report corrects scores by them).
    """
    CREATE TABLE judge_checks (
        check_id TEXT PRIMARY KEY, judge TEXT, judge_identity TEXT, created_at REAL, labels TEXT, rows_json TEXT
    );
    CREATE TABLE labels (
        run_id TEXT, embedding_model TEXT, llm TEXT, question_id TEXT, metric TEXT, label REAL,
        PRIMARY KEY (run_id, embedding_model, llm, question_id, metric)
    );
    """,
]

ANSWER_COLUMNS = [
    "answer",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "tokens_per_s",
    "exact_match",
    "token_f1",
    "cached",
    "error",
    "cause",
    "queued_s",
    "prompt_cut",
]


def _one_at_a_time(cls):
    """Every public method holds the store's lock: generation threads and the judge's thread write through one connection,
    and a transaction (BEGIN ... executemany) must not take in another thread's statements."""

    def locked(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            with self._lock:
                return method(self, *args, **kwargs)

        return call

    for name, attribute in list(vars(cls).items()):
        if callable(attribute) and not name.startswith("_"):
            setattr(cls, name, locked(attribute))
    return cls


@_one_at_a_time
class Store:
    def __init__(self, path: Path, create: bool = True, lock_timeout_s: float = LOCK_TIMEOUT_S):
        """Open (with `create`, make) the results database; every way that fails is one StorageError line naming the fix."""
        self.path = path
        self._lock = threading.RLock()
        folder = path.parent
        if folder.exists() and not folder.is_dir():
            raise StorageError(f"results folder {folder} is a file, not a folder — pick another --results-dir")
        if not create and not path.is_file():
            raise StorageError(f"no results database at {path} — check --results-dir (nothing was created)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(
                f"file:{quote(str(path))}?mode={'rwc' if create else 'rw'}",
                uri=True,
                isolation_level=None,
                timeout=lock_timeout_s,
                check_same_thread=False,  # shared by the run's threads, one statement at a time (see _one_at_a_time)
            )
            self.db.row_factory = sqlite3.Row
            _require_whole_ragsweep_file(self.db, path)
            if not create:  # reading never writes: not into an empty file, nor into a half-made one
                _require_results(self.db, path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process kill
            migrate(self.db)
            if create:  # can we write? (a read-only folder, or another program's lock held past the timeout, says so here)
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as error:
            raise StorageError(_storage_message(error, path, lock_timeout_s)) from None

    # runs -------------------------------------------------------------------------------
    def start_run(self, run_id: str, config: dict[str, Any], plan: dict[str, Any], platform: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO runs (run_id, started_at, status, config_json, plan_json, platform_json) VALUES (?, ?, 'running', ?, ?, ?)",
            (run_id, time.time(), json.dumps(config), json.dumps(plan), json.dumps(platform)),
        )

    def finish_run(self, run_id: str, status: str, exit_code: int) -> None:
        self.db.execute(
            "UPDATE runs SET finished_at = ?, status = ?, exit_code = ? WHERE run_id = ?", (time.time(), status, exit_code, run_id)
        )

    def mark_abandoned_runs(self) -> int:
        return self.db.execute("UPDATE runs SET status = 'crashed' WHERE status = 'running'").rowcount

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if not row:
            return None
        record = dict(row)
        for key in ("config", "plan", "platform"):
            record[key] = json.loads(record.pop(f"{key}_json", None) or "{}")
        return record

    def add_questions(self, run_id: str, questions: Iterable[Any]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO questions VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, q.id, i, q.question, q.reference, json.dumps(q.reference_context_ids)) for i, q in enumerate(questions)],
            )

    # caches ------------------------------------------------------------------------------
    def cached_embeddings(self, digest: str, text_hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(text_hashes), 500):  # stay under SQLite's variable limit
            chunk = text_hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT text_hash, vector FROM embedding_cache WHERE model_digest = ? AND text_hash IN ({marks})", (digest, *chunk)
            )
            found.update((row["text_hash"], np.frombuffer(row["vector"], dtype=np.float32)) for row in rows)
        return found

    def put_embeddings(self, digest: str, items: list[tuple[str, np.ndarray]]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO embedding_cache VALUES (?, ?, ?)",
                [(digest, text_hash, np.asarray(vector, dtype=np.float32).tobytes()) for text_hash, vector in items],
            )

    def cached_answer(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT text, prompt_tokens, completion_tokens, seconds FROM answer_cache WHERE key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def put_answer_cache(
        self, key: str, llm_digest: str, text: str, prompt_tokens: int | None, completion_tokens: int | None, seconds: float
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO answer_cache VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, llm_digest, text, prompt_tokens, completion_tokens, seconds, time.time()),
        )

    def mean_answer_seconds(self, llm_digest: str) -> float | None:
        """How long this model's answers took on this machine before (for the plan's estimate)."""
        row = self.db.execute("SELECT AVG(seconds) FROM answer_cache WHERE llm_digest = ?", (llm_digest,)).fetchone()
        return row[0]

    def loaded_bytes(self, model: str) -> int | None:
        """The most a model held on the device once loaded, in any earlier run (the ledger's 'loaded' rows)."""
        rows = self.db.execute("SELECT data FROM memory WHERE label = 'loaded' AND model = ?", (model,))
        sizes = [json.loads(r[0]).get("backend_loaded_vram_bytes") or 0 for r in rows]
        return max(sizes, default=0) or None

    def cached_embedding_count(self, digest: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM embedding_cache WHERE model_digest = ?", (digest,)).fetchone()[0]

    # per-run rows -------------------------------------------------------------------------
    def put_retrieval(
        self, run_id: str, embedding_model: str, question_id: str, retrieved_ids: list[str], contexts: list[str], scores: dict[str, float]
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO retrievals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                embedding_model,
                question_id,
                json.dumps(retrieved_ids),
                json.dumps(contexts),
                scores["recall_at_k"],
                scores["mrr"],
                scores["ndcg_at_k"],
            ),
        )

    def retrievals(self, run_id: str, embedding_model: str) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM retrievals WHERE run_id = ? AND embedding_model = ?", (run_id, embedding_model))
        return {
            row["question_id"]: {**dict(row), "contexts": json.loads(row["contexts"]), "retrieved_ids": json.loads(row["retrieved_ids"])}
            for row in rows
        }

    def put_answer(self, run_id: str, embedding_model: str, llm: str, question_id: str, values: dict[str, Any]) -> None:
        marks = ",".join("?" * (4 + len(ANSWER_COLUMNS)))
        self.db.execute(
            f"INSERT OR REPLACE INTO answers (run_id, embedding_model, llm, question_id, {', '.join(ANSWER_COLUMNS)}) VALUES ({marks})",
            (run_id, embedding_model, llm, question_id, *(values.get(column) for column in ANSWER_COLUMNS)),
        )

    def answer_counts(self, run_id: str) -> tuple[int, int]:
        """(answered, failed) samples of a run."""
        row = self.db.execute("SELECT COUNT(*) - COUNT(error), COUNT(error) FROM answers WHERE run_id = ?", (run_id,)).fetchone()
        return row[0], row[1]

    def cached_judgement(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value, prompt_tokens, completion_tokens, cost_usd FROM judge_cache WHERE key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def put_judge_cache(self, key: str, judge: str, metric: str, value: float, usage: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO judge_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, judge, metric, value, usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("cost_usd"), time.time()),
        )

    def put_judgement(self, run_id: str, embedding_model: str, llm: str, question_id: str, metric: str, values: dict[str, Any]) -> None:
        """One judgement of one cell; values["repeat"] (default 0) is which of --judge-repeats it is."""
        columns = ["repeat", "value", "cause", "message", "cached", "prompt_tokens", "completion_tokens", "cost_usd"]
        self.db.execute(
            f"INSERT OR REPLACE INTO judgements (run_id, embedding_model, llm, question_id, metric, {', '.join(columns)}) "
            f"VALUES ({','.join('?' * 13)})",
            (run_id, embedding_model, llm, question_id, metric, values.get("repeat", 0), *(values.get(c) for c in columns[1:])),
        )

    def judgements(self, run_id: str) -> list[dict[str, Any]]:
        return [
            dict(row)
            for row in self.db.execute(
                "SELECT * FROM judgements WHERE run_id = ? ORDER BY embedding_model, llm, question_id, metric, repeat", (run_id,)
            )
        ]

    def latest_run_id(self) -> str | None:
        row = self.db.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        return row[0] if row else None

    # what people said ---------------------------------------------------------------------
    def put_judge_check(self, check_id: str, judge: str, identity: str, labels: str, rows: list[dict[str, Any]]) -> None:
        row = (check_id, judge, identity, time.time(), labels, json.dumps(rows))
        self.db.execute("INSERT OR REPLACE INTO judge_checks VALUES (?, ?, ?, ?, ?, ?)", row)

    def judge_check(self, identity: str) -> dict[str, Any] | None:
        """The latest judge check of this judge identity, or None when it was never checked."""
        row = self.db.execute(
            "SELECT * FROM judge_checks WHERE judge_identity = ? ORDER BY created_at DESC LIMIT 1", (identity,)
        ).fetchone()
        return {**dict(row), "rows": json.loads(row["rows_json"])} if row else None

    def put_labels(self, run_id: str, labels: Iterable[tuple[str, str, str, str, float]]) -> None:
        """A person's labels of a run's samples (embedding model, LLM, question id, metric, label in [0, 1]): a later file
        with the same sample and metric replaces the label."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?)", [(run_id, *label) for label in labels])

    def labels(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(row) for row in self.db.execute("SELECT * FROM labels WHERE run_id = ? ORDER BY rowid", (run_id,))]

    # log ----------------------------------------------------------------------------------
    def add_event(self, run_id: str, seq: int, event: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, seq, event["t"], event["event"], event.get("stage"), event.get("model"), json.dumps(event)),
        )

    def add_snapshot(self, run_id: str, seq: int, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO memory VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, seq, row["t"], row["stage"], row["label"], row.get("model"), json.dumps(row)),
        )

    # reads for the report ----------------------------------------------------------------
    def samples(self, run_id: str) -> list[dict[str, Any]]:
        """One row per (embedding model, LLM, question): the join the exports are made of."""
        rows = self.db.execute(
            """
            SELECT a.embedding_model, a.llm, a.question_id, q.question, q.reference, r.retrieved_ids,
                   r.recall_at_k, r.mrr, r.ndcg_at_k, a.*
            FROM answers a
            JOIN questions q ON q.run_id = a.run_id AND q.question_id = a.question_id
            LEFT JOIN retrievals r ON r.run_id = a.run_id AND r.embedding_model = a.embedding_model AND r.question_id = a.question_id
            WHERE a.run_id = ? ORDER BY a.embedding_model, a.llm, q.position
            """,
            (run_id,),
        )
        return [dict(row) for row in rows]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(row["data"]) for row in self.db.execute("SELECT data FROM events WHERE run_id = ? ORDER BY seq", (run_id,))]

    def snapshots(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(row["data"]) for row in self.db.execute("SELECT data FROM memory WHERE run_id = ? ORDER BY t, seq", (run_id,))]


def is_storage_full(error: BaseException) -> bool:
    """The disk (or a size limit) ran out while writing: SQLite's SQLITE_FULL, or ENOSPC/EFBIG from a file write."""
    if isinstance(error, sqlite3.OperationalError):
        return "disk is full" in str(error) or "disk I/O error" in str(error)
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _require_whole_ragsweep_file(db: sqlite3.Connection, path: Path) -> None:
    """Someone else's database (tables, no ragsweep `meta`) is never migrated into; a cut-off copy is refused before it is read."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "meta" not in tables:
        raise StorageError(
            f"{path} is not a ragsweep database (tables: {', '.join(sorted(tables)[:5])}) — move it or pick another --results-dir"
        )
    wal = path.with_name(path.name + "-wal")
    if tables and not (wal.is_file() and wal.stat().st_size):  # without a WAL, the header's page count is the file's size
        expected = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        if path.stat().st_size < expected:
            cut = f"truncated: {path.stat().st_size} of {expected} bytes"
            raise StorageError(f"{path} is not a ragsweep database ({cut}) — move it or pick another --results-dir")


def _require_results(db: sqlite3.Connection, path: Path) -> None:
    """A database to read from: ragsweep's schema, of a version this ragsweep knows, with every table it reads."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        raise StorageError(f"{path} holds no ragsweep results (an empty database) — check --results-dir; nothing was written to it")
    version = _schema_version(db, path)
    missing = sorted({"runs", "questions", "answers", "retrievals", "events", "memory", "judgements"} - tables)
    if version < 1 or missing:
        what = f"tables {', '.join(missing)} are missing" if missing else f"schema version {version}"
        raise StorageError(f"{path} is a half-made ragsweep database ({what}) — move it or pick another --results-dir")


def _schema_version(db: sqlite3.Connection, path: Path) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else 0
    except (TypeError, ValueError):
        raise StorageError(f"{path}: its meta table says schema version {row[0]!r}, which no ragsweep writes — move it") from None


def _storage_message(error: BaseException, path: Path, lock_timeout_s: float) -> str:
    text = str(error)
    if "not a database" in text or "malformed" in text:
        return f"{path} is not a ragsweep database ({text}) — move it or pick another --results-dir"
    if "locked" in text:
        held = f"locked by another program for more than {lock_timeout_s:.0f} s"
        return f"the results database {path} is {held} — close it (sqlite3, a DB browser) and run again"
    if is_storage_full(error):
        return f"no space left for the results database {path} ({text}) — free some space or pick another --results-dir"
    reason = getattr(error, "strerror", None) or text
    return f"cannot write the results database {path} ({reason}) — check the folder's permissions, or pick another --results-dir"


def migrate(db: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version it started at."""
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    start = _schema_version(db, Path(db.execute("PRAGMA database_list").fetchone()[2]))
    if start > SCHEMA_VERSION:
        raise ConfigError(
            f"results database {db.execute('PRAGMA database_list').fetchone()[2]} has schema version {start}, newer than this "
            f"ragsweep ({SCHEMA_VERSION}) — upgrade ragsweep or use another --results-dir"
        )
    for version in range(start, SCHEMA_VERSION):
        db.executescript(f"BEGIN; {MIGRATIONS[version]}; INSERT OR REPLACE INTO meta VALUES ('schema_version', '{version + 1}'); COMMIT;")
    return start
