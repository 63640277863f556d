"""A hostile night: bad files, leaked secrets, broken storage, a full disk. Real files, real SQLite, real mounts.

Read-only and full disks are real tmpfs mounts inside a private user+mount namespace (`unshare -rm`),
so nothing outside the test sees them and they vanish with the process.
"""

import csv
import json
import os
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest

from cli import command, emulated_gpu_env, latest_run_dir, matrix, ollama_flags, run_cli
from conftest import REPO, write_jsonl
from judge_server import JudgeServer
from ollama_emulator import OllamaEmulator
from ragsweep.errors import StorageError
from ragsweep.lock import results_lock
from ragsweep.store import Store

DEMO = ["--corpus", str(REPO / "data/demo/corpus.jsonl"), "--testset", str(REPO / "data/demo/testset.jsonl")]
PASSWORD = "S3cretPassw0rd"
JUDGE_PASSWORD = "J4dgePassw0rd"


def one_line_error(result, code: int = 2) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def namespaced(mount_dir, options: str, *args: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The CLI with a fresh tmpfs (options: size=…, ro) mounted on `mount_dir`, in a private namespace."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], check=False).returncode != 0:
        pytest.skip("no user namespaces here (unshare -rm): a real tmpfs cannot be mounted without root")
    mount_dir.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o {options} tmpfs "{mount_dir}" && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *command(*args)], capture_output=True, text=True, env=env, timeout=timeout
    )


# Security ---------------------------------------------------------------------------------------------


def test_a_password_in_a_url_reaches_no_file_no_row_and_no_line(tmp_path):
    results = tmp_path / "results"
    with OllamaEmulator() as emu, JudgeServer() as judge:
        host = emu.url.replace("http://", f"http://admin:{PASSWORD}@")
        judge_url = f"{judge.url}/v1".replace("http://", f"http://user:{JUDGE_PASSWORD}@")
        env = emulated_gpu_env(emu, OLLAMA_HOST=host, OPENAI_API_KEY="sk-test")
        args = [
            "--backend",
            "ollama",
            *matrix("llama3.2:3b", "nomic-embed-text", 2),
            "--results-dir",
            results,
        ]
        judged = run_cli(*args, "--judge", "openai/judge", "--judge-base-url", judge_url, "--judge-embeddings", "openai/embed", env=env)
        planned = run_cli(*args, "--dry-run", env=env)
    down = run_cli("--backend", "ollama", "--ollama-host", f"http://admin:{PASSWORD}@127.0.0.1:9", "--results-dir", results, "--dry-run")
    assert judged.returncode in (0, 1), judged.stderr  # (the OpenAI client does not send URL userinfo: its cells may fail, as data)
    assert down.returncode == 3 and "admin:***@127.0.0.1:9" in down.stderr
    outputs = [judged.stdout, judged.stderr, planned.stdout, planned.stderr, down.stdout, down.stderr]
    files = [p for p in results.rglob("*") if p.is_file()]  # every export, run.json, events.jsonl, logs, the database and its WAL
    assert any(p.name == "ragsweep.sqlite" for p in files) and any(p.name == "run.json" for p in files)
    for secret in (PASSWORD, JUDGE_PASSWORD):
        assert not any(secret in text for text in outputs)
        assert not [p.name for p in files if secret.encode() in p.read_bytes()]
    record = json.loads((latest_run_dir(results) / "run.json").read_text())
    assert record["config"]["ollama_host"] == host.replace(PASSWORD, "***")
    assert "admin:***@" in json.dumps(record["models"])


def test_redaction_masks_userinfo_and_secret_query_parameters():
    from ragsweep.redact import redact

    assert redact("http://admin:pw@host:11434/x?token=abc&q=1") == "http://admin:***@host:11434/x?token=***&q=1"
    assert redact("see https://h/v1?api_key=K and http://h2") == "see https://h/v1?api_key=*** and http://h2"
    assert redact("http://host:11434") == "http://host:11434"


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path, tiny_corpus):
    testset = write_jsonl(tmp_path / "t.jsonl", [
        {"id": "q1", "question": "=HYPERLINK(\"http://x\",\"click\")", "reference": "@SUM(A1)", "reference_context_ids": ["d2"]},
        {"id": "q2", "question": "+cmd|' /C calc'!A0", "reference": "-2", "reference_context_ids": ["d1"]},
    ])  # fmt: skip
    with OllamaEmulator() as emu:
        args = [*ollama_flags(emu), "--llms", "llama3.2:3b", "--embeddings", "bm25", "--corpus", tiny_corpus, "--testset", testset]
        result = run_cli(*args, "--results-dir", tmp_path / "r", "--quiet", env=emulated_gpu_env(emu))
    assert result.returncode == 0, result.stderr
    rows = {r["question_id"]: r for r in csv.DictReader((latest_run_dir(tmp_path / "r") / "samples.csv").open())}
    assert rows["q1"]["question"].startswith("'=HYPERLINK") and rows["q1"]["reference"] == "'@SUM(A1)"
    assert rows["q2"]["question"].startswith("'+cmd") and rows["q2"]["reference"] == "'-2"
    with sqlite3.connect(tmp_path / "r" / "ragsweep.sqlite") as db:  # the store keeps the text as it was
        assert db.execute("SELECT question FROM questions WHERE question_id = 'q1'").fetchone()[0].startswith("=HYPERLINK")


# Settings that take effect ------------------------------------------------------------------------------


def test_dry_run_says_where_each_setting_came_from(tmp_path):
    env = dict(os.environ, RAGSWEEP_LLMS="smollm2-135m")
    result = run_cli("--dry-run", "--embeddings", "bm25", "--results-dir", tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "llms: smollm2-135m (environment variable RAGSWEEP_LLMS)" in result.stdout
    assert "embeddings: bm25 (--embeddings)" in result.stdout and "configs/demo.yaml:8: field 'limit')" in result.stdout


def test_run_json_records_the_judge_concurrency_that_ran(tmp_path):
    with OllamaEmulator() as emu:
        base = [*ollama_flags(emu), *matrix("llama3.2:3b", "bm25", 1), "--quiet"]
        assert run_cli(*base, "--results-dir", tmp_path / "a", "--judge-concurrency", "7", env=emulated_gpu_env(emu)).returncode == 0
        assert run_cli(*base, "--results-dir", tmp_path / "b", env=emulated_gpu_env(emu)).returncode == 0
    assert json.loads((latest_run_dir(tmp_path / "a") / "run.json").read_text())["platform"]["judge_concurrency"] == 7
    assert (
        json.loads((latest_run_dir(tmp_path / "b") / "run.json").read_text())["platform"]["judge_concurrency"] == 2
    )  # a CUDA card's default


@pytest.mark.parametrize("value, ok", [("1.5", False), ("-1", False), ("0", False), ("0.5", True), ("3", True)])
def test_max_failures_is_a_whole_count_or_a_share(tmp_path, value, ok):
    result = run_cli("--dry-run", "--llms", "smollm2-135m", "--embeddings", "bm25", "--max-failures", value, "--results-dir", tmp_path)
    if ok:
        assert result.returncode == 0, result.stderr
    else:
        assert "--max-failures:" in one_line_error(result)


# Clear errors instead of tracebacks ----------------------------------------------------------------------


def dry_run(tmp_path, *args: str, env=None):
    return run_cli("--dry-run", "--llms", "smollm2-135m", "--embeddings", "bm25", "--results-dir", tmp_path / "r", *args, env=env)


def test_files_that_are_not_utf8_name_line_and_column(tmp_path, tiny_corpus, tiny_testset):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        tiny_testset.read_bytes()
        + '{"id": "q3", "question": "Café?", "reference": "x", "reference_context_ids": ["d1"]}\n'.encode("latin-1")
    )
    error = one_line_error(dry_run(tmp_path, "--corpus", str(tiny_corpus), "--testset", str(latin)))
    assert f"{latin}:3: not UTF-8 (byte 0xe9 at column 30) — save it as UTF-8" in error
    corpus = tmp_path / "corpus.csv"
    corpus.write_bytes(b"id,title,text\nd1,Caf\xe9,coffee\n")
    assert f"{corpus}:2: not UTF-8 (byte 0xe9" in one_line_error(dry_run(tmp_path, "--corpus", str(corpus), "--testset", str(tiny_testset)))
    (tmp_path / ".env").write_bytes(b"RAGSWEEP_LLMS=caf\xe9\n")
    result = subprocess.run(
        command("--dry-run", "--results-dir", tmp_path / "r"), capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert f"{tmp_path / '.env'}:1: not UTF-8 (byte 0xe9 at column 18)" in one_line_error(result)


def test_half_an_escape_pair_is_one_line_not_a_traceback_from_the_store(tmp_path, tiny_corpus, tiny_testset):
    """json.loads turns \\ud800 into text that SQLite, CSV and the terminal all refuse (it was a UnicodeEncodeError
    traceback at the start of the run)."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        tiny_testset.read_text() + '{"id": "q3", "question": "\\ud800?", "reference": "x", "reference_context_ids": ["d1"]}\n'
    )
    error = one_line_error(dry_run(tmp_path, "--corpus", str(tiny_corpus), "--testset", str(broken)))
    assert f"{broken}:3: field 'question' holds a lone UTF-16 surrogate (\\ud800) at character 1" in error


def test_a_utf8_bom_is_accepted(tmp_path, tiny_corpus, tiny_testset):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + tiny_testset.read_bytes())
    result = dry_run(tmp_path, "--corpus", str(tiny_corpus), "--testset", str(bom))
    assert result.returncode == 0, result.stderr


def test_csv_ids_and_titles_stay_text(tmp_path):
    from ragsweep.testset import load_corpus, load_questions

    corpus = tmp_path / "c.csv"
    corpus.write_text("id,title,text\n007,1984,A novel by Orwell.\n2,Animal Farm,Another one.\n", encoding="utf-8")
    testset = tmp_path / "t.csv"
    testset.write_text(
        'id,question,reference,reference_context_ids\n1,Who wrote 1984?,Orwell,"[""007""]"\n2,Pigs?,Orwell,2\n', encoding="utf-8"
    )
    documents = load_corpus(corpus)
    assert [(d.id, d.title) for d in documents] == [("007", "1984"), ("2", "Animal Farm")]
    questions = load_questions(testset, {d.id for d in documents})
    assert [(q.id, q.reference_context_ids) for q in questions] == [("1", ("007",)), ("2", ("2",))]


def test_parquet_files_that_are_not_parquet_or_have_wrong_types(tmp_path, tiny_corpus):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fake = tmp_path / "t.parquet"
    fake.write_text("id,question\n1,x\n")
    assert f"{fake}: not a readable Parquet file" in one_line_error(dry_run(tmp_path, "--corpus", str(tiny_corpus), "--testset", str(fake)))
    typed = tmp_path / "typed.parquet"
    pq.write_table(
        pa.table({"id": [1, 2], "question": ["A?", "B?"], "reference": ["a", "b"], "reference_context_ids": [["d1"], ["d2"]]}), typed
    )
    for _ in range(3):  # the int id once crashed the process with SIGABRT at exit, after the right message
        result = dry_run(tmp_path, "--corpus", str(tiny_corpus), "--testset", str(typed))
        assert result.returncode == 0, result.stderr
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"id": ["q1"], "question": [5], "reference": ["a"], "reference_context_ids": [["d1"]]}), wrong)
    assert f"{wrong}: row 1: field 'question' must be str, got int" in one_line_error(
        dry_run(tmp_path, "--corpus", str(tiny_corpus), "--testset", str(wrong))
    )


def test_results_dirs_and_databases_that_cannot_be_used(tmp_path):
    a_file = tmp_path / "results-file"
    a_file.write_text("not a folder")
    assert "is a file, not a folder" in one_line_error(dry_run(tmp_path, "--results-dir", str(a_file)))
    for name, content in (("garbage", b"this is not sqlite at all" * 100), ("truncated", None)):
        folder = tmp_path / name
        folder.mkdir()
        if content is None:  # a real ragsweep database, cut in half
            whole = Store(tmp_path / "whole" / "ragsweep.sqlite")
            whole.put_embeddings("d", [(f"h{i}", np.ones(384, dtype=np.float32)) for i in range(200)])
            whole.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            content = whole.path.read_bytes()
            content = content[: len(content) // 2]
        (folder / "ragsweep.sqlite").write_bytes(content)
        assert "is not a ragsweep database" in one_line_error(dry_run(tmp_path, "--results-dir", str(folder)))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / "ragsweep.sqlite") as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    error = one_line_error(dry_run(tmp_path, "--results-dir", str(foreign)))
    assert "is not a ragsweep database (tables: invoices) — move it or pick another --results-dir" in error


def test_a_read_only_results_folder_is_one_line(tmp_path):
    results = tmp_path / "ro"
    result = namespaced(results, "ro", "--dry-run", "--llms", "smollm2-135m", "--embeddings", "bm25", "--results-dir", str(results))
    assert f"cannot write the results database {results / 'ragsweep.sqlite'}" in one_line_error(result)


def test_a_database_locked_by_another_program_is_one_line(tmp_path):
    path = tmp_path / "ragsweep.sqlite"
    Store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program mid-transaction (sqlite3 CLI, a DB browser)
    with pytest.raises(StorageError, match=r"is locked by another program for more than 0 s — close it"):
        Store(path, lock_timeout_s=0.2)
    holder.execute("ROLLBACK")


def test_a_full_disk_mid_run_stops_cleanly_with_what_finished_saved(tmp_path):
    results = tmp_path / "small"
    with OllamaEmulator() as emu:
        args = [
            *ollama_flags(emu),
            *matrix("llama3.2:3b", "bm25,nomic-embed-text", 20),
            "--results-dir",
            str(results),
        ]
        result = namespaced(results, "size=600k", *args, *DEMO, env=emulated_gpu_env(emu))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    closing = result.stdout.strip().splitlines()[-1]
    assert ": failed: disk full;" in closing and "samples answered" in closing, result.stdout


def test_mathtext_and_pipes_in_model_names_do_not_break_reports(tmp_path):
    from ragsweep.report import write_exports
    from ragsweep.testset import Question

    store = Store(tmp_path / "db.sqlite")
    store.start_run("r1", {}, {}, {})
    store.add_questions("r1", [Question("q1", "Q?", "A", ("d1",))])
    store.put_retrieval("r1", "$\\bad$|x", "q1", ["d1"], ["A"], {"recall_at_k": 1.0, "mrr": 1.0, "ndcg_at_k": 1.0})
    store.put_answer(
        "r1", "$\\bad$|x", "/models/$\\bad$.gguf", "q1", {"answer": "A", "token_f1": 1.0, "exact_match": 1.0, "latency_s": 1.0}
    )
    write_exports(store, "r1", tmp_path / "r1")
    assert "$\\bad$\\|x" in (tmp_path / "r1" / "report.md").read_text() and (tmp_path / "r1" / "report.html").stat().st_size > 1000


def test_an_invalid_ollama_host_names_the_flag(tmp_path):
    assert "--ollama-host: not a valid URL" in one_line_error(dry_run(tmp_path, "--backend", "ollama", "--ollama-host", "http://[::1"))


def test_an_ascii_terminal_gets_ascii_not_a_crash(tmp_path):
    env = dict(os.environ, PYTHONIOENCODING="ascii", LC_ALL="C")
    result = dry_run(tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "1 retrievers x 1 LLMs x 20 questions" in result.stdout


# Reading never writes ---------------------------------------------------------------------------------


def test_report_never_creates_a_database_and_waits_for_no_live_run(tmp_path):
    typo = tmp_path / "typo"
    assert "no results database at" in one_line_error(run_cli("report", "--results-dir", typo))
    assert not typo.exists()
    with OllamaEmulator() as emu:
        args = [
            *ollama_flags(emu),
            *matrix("llama3.2:3b", "bm25", 1),
            "--results-dir",
            tmp_path / "r",
            "--quiet",
        ]
        assert run_cli(*args, env=emulated_gpu_env(emu)).returncode == 0
    with results_lock(tmp_path / "r", "a-live-run"):  # a run in progress holds the folder
        result = run_cli("report", "--results-dir", tmp_path / "r")
    assert "another ragsweep run is using" in one_line_error(result, code=4)


# Numbers ----------------------------------------------------------------------------------------------

NUMERIC_SETTINGS = [
    name
    for name, field in __import__("ragsweep.config", fromlist=["Settings"]).Settings.model_fields.items()
    if any(kind in str(field.annotation) for kind in ("int", "float")) and "list" not in str(field.annotation)
]


@pytest.mark.parametrize("name", NUMERIC_SETTINGS)
def test_every_numeric_setting_refuses_infinite_huge_and_negative_values_in_one_line(tmp_path, name):
    from ragsweep.config import load_settings
    from ragsweep.errors import ConfigError

    for value in (".inf", "-.inf", ".nan", "1e300", "-1", "99999999999999999999"):
        shown = f"{{faithfulness: {value}}}" if name.startswith("judge_metric_") else value
        config = tmp_path / "config.yaml"
        config.write_text(f"{name}: {shown}\n")
        try:
            load_settings(config, {}, environ={})
        except ConfigError as error:
            assert str(error).startswith(f"{config}:1: field '{name}'") and "\n" not in str(error)
        else:
            pytest.fail(f"{name}: {value} was accepted")


@pytest.mark.parametrize("flags", [["--max-failures", "inf"], ["--request-timeout", "inf"], ["--request-timeout", "1e12"]])
def test_infinite_or_huge_numbers_on_the_command_line_are_one_line(tmp_path, flags):
    assert one_line_error(run_cli(*flags, "--results-dir", tmp_path, "--dry-run")).startswith(f"ragsweep: error: {flags[0]}: ")


def test_an_error_names_the_flag_the_user_typed():
    from ragsweep.cli import build_parser
    from ragsweep.config import Settings, load_settings
    from ragsweep.errors import ConfigError

    for action in build_parser()._actions:
        if action.dest in Settings.model_fields and action.type in (int, float):
            with pytest.raises(ConfigError) as refused:
                load_settings(None, {action.dest: -(10**30)}, environ={})
            assert refused.value.args[0].split(":")[0] in action.option_strings, action.dest


@pytest.mark.parametrize("flags", [["--port", "99999"], ["--port", "0"], ["--gpus", "0"], ["--gpus", "-3"]])
def test_a_worker_port_or_gpu_count_out_of_range_is_refused(flags):
    result = run_cli("worker", "tcp://127.0.0.1:9", "--name", "box", *flags)
    assert result.returncode == 2 and f"argument {flags[0]}: " in result.stderr and "Traceback" not in result.stderr


# Inputs that ended in a traceback ---------------------------------------------------------------------


def test_json_nested_past_the_parsers_depth_is_one_line(tmp_path, tiny_corpus):
    for name, text in (("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"), ("deep.json", "[" + "[" * 100_000 + "]" * 100_000 + "]")):
        testset = tmp_path / name
        testset.write_text(text)
        error = one_line_error(run_cli("--corpus", tiny_corpus, "--testset", testset, "--results-dir", tmp_path, "--dry-run"))
        assert f"{testset}" in error and "nested too deeply" in error


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    passage = "Paris is the capital of France. " * 5_000  # 160,000 characters: one long document
    corpus = tmp_path / "corpus.csv"
    corpus.write_text(f'id,title,text\nd1,Paris,"{passage}"\n')
    testset = write_jsonl(
        tmp_path / "testset.jsonl", [{"id": "q1", "question": "Capital of France?", "reference": "Paris", "reference_context_ids": ["d1"]}]
    )
    result = run_cli("--corpus", corpus, "--testset", testset, "--results-dir", tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr


def as_a_user(*args: str) -> subprocess.CompletedProcess:
    """The CLI without root's power to read any file (the suite may run as root in a container): file modes apply."""
    if os.geteuid() != 0:
        return run_cli(*args)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a file root cannot read cannot be made")
    drop = "-dac_override,-dac_read_search"
    return subprocess.run(
        ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *command(*args)], capture_output=True, text=True, timeout=300
    )


def test_files_the_os_will_not_let_us_read_are_one_line(tmp_path, tiny_corpus, tiny_testset):
    tiny_testset.chmod(0)
    error = one_line_error(as_a_user("--corpus", tiny_corpus, "--testset", tiny_testset, "--results-dir", tmp_path, "--dry-run"))
    assert error.startswith(f"ragsweep: error: {tiny_testset}: cannot read it (Permission denied)")
    config = tmp_path / "settings.yaml"
    config.write_text("limit: 5\n")
    config.chmod(0)
    error = one_line_error(as_a_user("--config", config, "--dry-run"))
    assert error.startswith(f"ragsweep: error: config file {config}: cannot read it (Permission denied)")


def test_a_config_that_is_not_utf8_names_line_and_column(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("limit: 5\nllms: [caf\xe9]\n".encode("latin-1"))
    assert (
        one_line_error(run_cli("--config", config, "--dry-run"))
        == f"ragsweep: error: {config}:2: not UTF-8 (byte 0xe9 at column 11) — save it as UTF-8\n"
    )


@pytest.mark.parametrize(
    "made, says",
    [
        ([], "holds no ragsweep results (an empty database)"),
        (["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)"], "half-made ragsweep database (tables answers"),
        (["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)", "INSERT INTO meta VALUES ('schema_version', 'abc')"], "'abc'"),
        (["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)", "INSERT INTO meta VALUES ('schema_version', '4')"], "are missing"),
    ],
)
def test_report_on_an_empty_or_half_made_database_is_one_line_and_writes_nothing(tmp_path, made, says):
    database = tmp_path / "ragsweep.sqlite"
    database.touch()
    with sqlite3.connect(database) as db:
        for statement in made:
            db.execute(statement)
    db.close()
    before = database.read_bytes()
    assert says in one_line_error(run_cli("report", "--results-dir", tmp_path))
    assert database.read_bytes() == before  # reading never writes


# Secrets in every form a user writes them ---------------------------------------------------------------

SECRET = "Zq9SECRETxY"
CREDENTIAL_FORMS = [
    "u:{s}@127.0.0.1:9",  # no scheme, as OLLAMA_HOST is often written
    "http://u:{s}@127.0.0.1:9",
    "https://u:p@{s}@127.0.0.1:9/v1",  # a password holding '@', written raw
    "http://u:{s}%2Fx@127.0.0.1:9",  # percent-encoded
    "http://{s}@127.0.0.1:9",  # a token as the user part
    "http://127.0.0.1:9/v1?api_key={s}",
]
URL_SETTINGS = {
    "ollama_host": lambda url: ["--backend", "local", "--llms", "smollm2-135m", "--embeddings", "bm25", "--ollama-host", url],
    "OLLAMA_HOST": lambda url: ["--backend", "local", "--llms", "smollm2-135m", "--embeddings", "bm25"],
    "judge_base_url": lambda url: ["--judge", "openai/judge", "--judge-base-url", url, "--judge-embeddings", "openai/e"],
    "cluster": lambda url: ["--cluster", url.replace("http://", "tcp://").replace("https://", "tls://")],
}


@pytest.mark.parametrize("setting", URL_SETTINGS)
@pytest.mark.parametrize("form", CREDENTIAL_FORMS)
def test_a_secret_in_any_url_setting_and_any_form_is_never_shown_or_stored(tmp_path, capsys, monkeypatch, setting, form):
    import benchmark

    url = form.format(s=SECRET)
    monkeypatch.setenv("OLLAMA_HOST", url if setting == "OLLAMA_HOST" else "http://127.0.0.1:9")
    code = benchmark.main([*URL_SETTINGS[setting](url), *DEMO, "--results-dir", str(tmp_path), "--dry-run"])
    out = capsys.readouterr()
    assert code in (0, 2, 3), out.err
    assert SECRET not in out.out + out.err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.parametrize("form", CREDENTIAL_FORMS)
def test_a_secret_in_a_worker_address_is_never_shown(form):
    result = run_cli("worker", form.format(s=SECRET).replace("http://", "tcp://").replace("https://", "tcp://"), "--name", "box")
    assert result.returncode in (2, 3) and SECRET not in result.stdout + result.stderr and "Traceback" not in result.stderr


# What a model name may carry ----------------------------------------------------------------------------

HOSTILE_NAMES = ["[/x]", "[bold red]loud[/]", "\x1b[31mred\x1b]0;owned\x07", "<span onmouseover=alert(1)>m"]
ON_SCREEN = ["[/x].gguf", "[bold red]loud[/].gguf", "red.gguf", "<span onmouseover=alert(1)>m.gguf"]  # as typed, less escapes


@pytest.mark.parametrize("name, on_screen", list(zip(HOSTILE_NAMES, ON_SCREEN, strict=True)))
def test_a_model_name_is_shown_as_text_on_the_terminal(tmp_path, name, on_screen):
    from ragsweep.backends.local import LocalBackend

    gguf = LocalBackend("cpu", 60).describe("smollm2-135m", "llm").source
    hostile = tmp_path / f"{name}.gguf"  # a '/' in the name makes a folder: the path as typed still holds the whole name
    hostile.parent.mkdir(parents=True, exist_ok=True)
    hostile.symlink_to(gguf)
    result = run_cli("--llms", str(hostile), "--embeddings", "bm25", *DEMO, "--results-dir", tmp_path / "r", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout  # no escape sequence reaches the terminal
    assert on_screen in result.stdout and "owned" not in result.stdout  # brackets shown as typed; a window title is not


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_model_name_is_escaped_in_every_report(tmp_path, name):
    from ragsweep.report import write_exports
    from ragsweep.testset import Question

    store = Store(tmp_path / "db.sqlite")
    for run_id in ("r0", "r1"):  # r0 is the baseline: report.html then has the comparison table of deltas
        store.start_run(run_id, {}, {}, {})
        store.add_questions(run_id, [Question("q1", "Q?", "A", ("d1",))])
        store.put_retrieval(run_id, "bm25", "q1", ["d1"], ["A"], {"recall_at_k": 1.0, "mrr": 1.0, "ndcg_at_k": 1.0})
        store.put_answer(run_id, "bm25", name, "q1", {"answer": "A", "token_f1": 1.0, "exact_match": 1.0, "latency_s": 1.0})
        store.add_event(run_id, 1, {"t": 1.0, "event": "note", "stage": None, "model": None, "message": f"{name}: failed"})
    write_exports(store, "r1", tmp_path / "r1", baseline_id="r0")
    html = (tmp_path / "r1" / "report.html").read_text()
    markdown = (tmp_path / "r1" / "report.md").read_text()
    assert "<span onmouseover" not in html and "<span onmouseover" not in markdown
    if name.startswith("<"):
        assert "&lt;span onmouseover=alert(1)&gt;m" in html and "&lt;span onmouseover=alert(1)&gt;m" in markdown
