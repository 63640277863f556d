"""Several boxes, one sweep: a real Dask scheduler, real `benchmark.py worker` processes, each box with its own Ollama emulator."""

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager

import pytest
from tcp_forward import Forward

from cli import BENCHMARK, command, emulated_gpu_env, latest_run_dir, matrix, ollama_flags, run_cli, start_cli
from conftest import DEMO
from ollama_emulator import Fault, OllamaEmulator

distributed = pytest.importorskip("distributed")

LLMS, EMBEDDINGS = "llama3.2:3b,qwen2.5:7b", "nomic-embed-text,all-minilm"
DEMO_DATA = ["--corpus", DEMO / "corpus.jsonl", "--testset", DEMO / "testset.jsonl"]


@pytest.fixture
def scheduler():
    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", scheduler_port=0, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def start_box(address: str, name: str, emu: OllamaEmulator) -> subprocess.Popen:
    env = emulated_gpu_env(emu)  # this box's NVML reads this box's emulated card
    return subprocess.Popen(
        command("worker", address, "--name", name, "--backend", "ollama", "--ollama-host", emu.url),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(address: str, count: int) -> None:
    with distributed.Client(address, timeout="10s") as client:
        client.wait_for_workers(count, timeout=60)


def head_args(address: str, results, *extra: str) -> list:
    return [
        "--backend",
        "ollama",
        "--cluster",
        address,
        *matrix(LLMS, EMBEDDINGS, 6),
        "--results-dir",
        results,
        "--quiet",
        *DEMO_DATA,
        *extra,
    ]


def samples(results) -> dict:
    return {(r["embedding_model"], r["llm"], r["question_id"]): r for r in csv.DictReader((latest_run_dir(results) / "samples.csv").open())}


def events_of(results) -> list[dict]:
    runs = [p for p in results.iterdir() if p.is_dir()] if results.is_dir() else []
    found = runs and latest_run_dir(results) / "events.jsonl"
    return [json.loads(line) for line in found.read_text().splitlines()] if found and found.is_file() else []


def wait_while_running(head: subprocess.Popen, condition, timeout_s: float = 120) -> None:
    """Until `condition()` holds; the head must still be running."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert head.poll() is None and time.monotonic() < deadline, head.communicate()
        time.sleep(0.02)


def hold_slot(client, box: str):
    """Take the box's gpu slot with a waiting task, so that stage tasks go to the other boxes; returns what frees it."""
    [address] = [a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == box]
    task = client.submit(lambda: distributed.Event(f"hold-{box}").wait(300), resources={"gpu": 1}, workers=[address])
    while not client.processing(workers=[address])[address]:
        time.sleep(0.05)

    def release() -> None:
        distributed.Event(f"hold-{box}", client=client).set()
        task.result()

    return release


@contextmanager
def killed_at_end(boxes):
    """The box processes (a list, or name -> process), killed when the block ends whatever happened; the block may add more."""
    try:
        yield boxes
    finally:
        for box in boxes.values() if isinstance(boxes, dict) else boxes:
            box.kill()


def logged(results, event: str) -> int:
    """How many times the newest run under `results` has logged `event` so far."""
    return sum(e["event"] == event for e in events_of(results))


def test_two_boxes_run_every_stage_once_and_match_a_single_box(scheduler, tmp_path):
    with OllamaEmulator() as a, OllamaEmulator() as b, OllamaEmulator() as alone:
        with killed_at_end([start_box(scheduler, "box-a", a), start_box(scheduler, "box-b", b)]):
            wait_for(scheduler, 2)
            plan = run_cli(*[arg for arg in head_args(scheduler, tmp_path / "cluster", "--dry-run") if arg != "--quiet"])
            result = run_cli(*head_args(scheduler, tmp_path / "cluster"))
        single = run_cli(
            *ollama_flags(alone),
            *matrix(LLMS, EMBEDDINGS, 6),
            "--results-dir",
            tmp_path / "single",
            "--quiet",
            *DEMO_DATA,
            env=emulated_gpu_env(alone),
        )
        loads = Counter(a.state.loads) + Counter(b.state.loads)
    assert result.returncode == 0, result.stdout + result.stderr
    assert single.returncode == 0, single.stderr
    assert (
        f"note: cluster {scheduler}: 2 boxes: " in plan.stdout and "box-a (1 gpu slot" in plan.stdout and "box-b (1 gpu slot" in plan.stdout
    )
    assert dict(loads) == {
        "llama3.2:3b": 1,
        "qwen2.5:7b": 1,
        "nomic-embed-text:latest": 1,
        "all-minilm:latest": 1,
    }  # each model once, cluster-wide
    assert a.state.loads and b.state.loads  # both boxes worked
    clustered, alone_rows = samples(tmp_path / "cluster"), samples(tmp_path / "single")
    assert len(clustered) == 24 and {k: r["answer"] for k, r in clustered.items()} == {k: r["answer"] for k, r in alone_rows.items()}
    ledger = list(csv.DictReader((latest_run_dir(tmp_path / "cluster") / "memory.csv").open()))
    assert {row["box"] for row in ledger if row["label"] == "after_unload"} == {"box-a", "box-b"}
    events = events_of(tmp_path / "cluster")
    assert {e["box"] for e in events if e["event"] == "model_load"} == {"box-a", "box-b"}
    report = (latest_run_dir(tmp_path / "cluster") / "report.md").read_text()
    per_box = report.split("### Per box")[1].split("\n### ")[0]
    assert "| box-a |" in per_box and "| box-b |" in per_box and "FAIL" not in per_box


def test_a_local_backend_box_runs_the_real_model_and_answers_as_in_process(scheduler, tmp_path):
    """`worker --backend local`: the box's stage task builds its own LocalBackend and loads the model it never described."""
    box = subprocess.Popen(command("worker", scheduler, "--name", "box-local", "--backend", "local"), stderr=subprocess.PIPE, text=True)
    args = ["--backend", "local", *matrix("smollm2-135m", "bm25", 2), "--quiet", *DEMO_DATA]
    try:
        wait_for(scheduler, 1)
        clustered = run_cli(*args, "--cluster", scheduler, "--results-dir", tmp_path / "cluster", timeout=600)
    finally:
        box.kill()
    alone = run_cli(*args, "--results-dir", tmp_path / "alone", timeout=600)
    assert clustered.returncode == 0 and alone.returncode == 0, clustered.stdout + clustered.stderr + alone.stderr
    loads = events_of(tmp_path / "cluster")
    assert [e["box"] for e in loads if e["event"] == "model_load" and e["model"] == "smollm2-135m"] == ["box-local"]
    answers = {k: r["answer"] for k, r in samples(tmp_path / "cluster").items()}
    assert len(answers) == 2 and all(answers.values()) and answers == {k: r["answer"] for k, r in samples(tmp_path / "alone").items()}


def test_a_box_lost_mid_generation_costs_only_the_answers_in_flight(scheduler, tmp_path):
    with OllamaEmulator(call_s=0.05) as a, OllamaEmulator(call_s=0.05) as b:
        with killed_at_end({"box-a": start_box(scheduler, "box-a", a), "box-b": start_box(scheduler, "box-b", b)}) as boxes:
            wait_for(scheduler, 2)
            head = start_cli(*head_args(scheduler, tmp_path / "r"))
            wait_while_running(head, lambda: max(emu.state.work[("answers", m)] for emu in (a, b) for m in LLMS.split(",")) >= 3)
            victim = "box-a" if sum(v for (kind, _), v in a.state.work.items() if kind == "answers") else "box-b"
            boxes[victim].kill()
            out, err = head.communicate(timeout=180)
        answered = sum(v for emu in (a, b) for (kind, _), v in emu.state.work.items() if kind == "answers")
    assert head.returncode == 0, out + err
    rows = samples(tmp_path / "r")
    assert len(rows) == 24 and all(r["answer"] and not r["error"] for r in rows.values())
    distinct = len({(r["llm"], r["answer"], r["retrieved_ids"]) for r in rows.values()})
    events = events_of(tmp_path / "r")
    loads = Counter(e["model"] for e in events if e["event"] == "model_load" and e["stage"] == "generate")
    assert max(loads.values()) == 2  # the lost box's stage was loaded again on the other box
    lost = [e for e in events if e["event"] == "box_lost"]
    assert len(lost) == 1 and lost[0]["box"] == victim and lost[0]["model"] in loads
    report = (latest_run_dir(tmp_path / "r") / "report.md").read_text()
    assert f"generate {lost[0]['model']}: box lost: box {victim} left the cluster" in report
    assert answered <= distinct + 2  # what was finished was not asked again; at most the answers in flight were lost


def test_with_every_box_gone_the_head_waits_cluster_wait_s_then_exits_3_and_the_same_command_resumes(scheduler, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("cluster_wait_s: 2\n")
    args = ["--config", config, *head_args(scheduler, tmp_path / "r")]
    with OllamaEmulator(call_s=0.05) as first, OllamaEmulator() as second:
        box = start_box(scheduler, "box-a", first)
        try:
            wait_for(scheduler, 1)
            head = start_cli(*args)
            wait_while_running(head, lambda: any(first.state.work[("answers", m)] >= 3 for m in ("llama3.2:3b", "qwen2.5:7b")))
            box.kill()
            out, err = head.communicate(timeout=120)
        finally:
            box.kill()
        made = sum(v for (kind, _), v in first.state.work.items() if kind == "answers")
        box = start_box(scheduler, "box-b", second)
        try:
            wait_for(scheduler, 1)
            resumed = run_cli(*args)
        finally:
            box.kill()
        remade = sum(v for (kind, _), v in second.state.work.items() if kind == "answers")
    assert head.returncode == 3, out + err
    assert "no box left on the Dask scheduler for 2 s — finished work is saved" in out + err
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = samples(tmp_path / "r")
    assert len(rows) == 24 and all(r["answer"] and not r["error"] for r in rows.values())
    distinct = len({(r["llm"], r["answer"], r["retrieved_ids"]) for r in rows.values()})
    assert 3 <= made and made + remade <= distinct + 2  # the second box made only what the first had not finished


def test_a_model_that_fits_no_box_fails_with_its_reason_and_the_rest_completes(scheduler, tmp_path):
    with OllamaEmulator(total_vram=5 * 1024**3, system_ram=1024**3) as small:  # a 7B never fits, not even split
        box = start_box(scheduler, "box-small", small)
        try:
            wait_for(scheduler, 1)
            args = ["--backend", "ollama", "--cluster", scheduler, *matrix("llama3.2:3b,qwen2.5:7b", "nomic-embed-text", 3)]
            result = run_cli(*args, "--results-dir", tmp_path, "--quiet", *DEMO_DATA)
        finally:
            box.kill()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3/6 samples answered" in result.stdout
    rows = samples(tmp_path)
    failed = [r for r in rows.values() if r["error"]]
    assert {r["llm"] for r in failed} == {"qwen2.5:7b"} and len(failed) == 3
    assert "qwen2.5:7b ran on no box" in failed[0]["error"] and "does not fit in memory" in failed[0]["error"]


def test_out_of_memory_on_a_small_box_moves_the_unfinished_work_to_a_bigger_one(scheduler, tmp_path):
    """qwen2.5:7b does not load on the 5 GB box; llama3.2:3b loads there but every answer runs out of memory. Both go to
    the 12 GB box, which is held busy until then so that the small box is tried first; nothing is asked of the small box
    twice, and every answer ends up made."""
    with OllamaEmulator(total_vram=5 * 1024**3, system_ram=1024**3) as small, OllamaEmulator() as big:
        small.add_fault(Fault("/api/chat", 500, "CUDA error: out of memory", count=1000, model="llama3.2:3b", when="work"))
        with killed_at_end([start_box(scheduler, "box-small", small), start_box(scheduler, "box-big", big)]):
            wait_for(scheduler, 2)
            args = ["--backend", "ollama", "--cluster", scheduler, *matrix("llama3.2:3b,qwen2.5:7b", "bm25", 3)]
            plan = run_cli(*args, *DEMO_DATA, "--results-dir", tmp_path / "plan", "--dry-run")
            with distributed.Client(scheduler, timeout="10s") as client:
                release = hold_slot(client, "box-big")
                head = start_cli(*args, *DEMO_DATA, "--results-dir", tmp_path / "r", "--quiet")
                wait_while_running(head, lambda: logged(tmp_path / "r", "stage_moved") == 2)
                release()
                out, err = head.communicate(timeout=120)
    assert head.returncode == 0, out + err
    fits = {line.split("│")[1].strip(): line for line in plan.stdout.splitlines() if line.count("│") > 3}
    assert "yes on every box" in fits["llama3.2:3b"] and "yes on box-big; NO on box-small" in fits["qwen2.5:7b"]
    rows = samples(tmp_path / "r")
    assert len(rows) == 6 and all(r["answer"] and not r["error"] for r in rows.values())
    assert dict(small.state.loads) == {"llama3.2:3b": 1 + 3}  # loaded, then once more with less context per failed answer; qwen never
    assert small.state.work[("answers", "qwen2.5:7b")] == 0 and small.state.work[("answers", "llama3.2:3b")] == 0
    assert dict(big.state.loads) == {"llama3.2:3b": 1, "qwen2.5:7b": 1}
    assert big.state.work[("answers", "llama3.2:3b")] == 3 and big.state.work[("answers", "qwen2.5:7b")] == 3
    moved = {e["model"]: e for e in events_of(tmp_path / "r") if e["event"] == "stage_moved"}
    assert {m: (e["box"], e["to"]) for m, e in moved.items()} == {m: ("box-small", "box-big") for m in ("llama3.2:3b", "qwen2.5:7b")}
    assert "does not fit in memory" in moved["qwen2.5:7b"]["message"] and moved["llama3.2:3b"]["message"] == "3 answers ran out of memory"
    report = (latest_run_dir(tmp_path / "r") / "report.md").read_text()
    assert "generate qwen2.5:7b: stage moved: " in report.split("## Faults and recoveries")[1]


@pytest.mark.parametrize("another_joins", [True, False], ids=["a-bigger-box-joins", "none-joins"])
def test_a_move_whose_bigger_box_dies_waits_for_a_bigger_box(scheduler, tmp_path, another_joins):
    """qwen2.5:7b moves from the 5 GB box to box-big, which dies before it runs it. box-big-2 joins and answers; or none
    does, and after cluster_wait_s qwen's samples fail with where it went."""
    config = tmp_path / "run.yaml"
    config.write_text(f"cluster_wait_s: {30 if another_joins else 3}\n")  # a box's start takes seconds on a loaded machine
    with OllamaEmulator(total_vram=5 * 1024**3, system_ram=1024**3) as small, OllamaEmulator() as big, OllamaEmulator() as later:
        with killed_at_end(
            {"box-small": start_box(scheduler, "box-small", small), "box-big": start_box(scheduler, "box-big", big)}
        ) as boxes:
            wait_for(scheduler, 2)
            args = ["--config", config, "--backend", "ollama", "--cluster", scheduler, *matrix("qwen2.5:7b", "bm25", 3), "--quiet"]
            with distributed.Client(scheduler, timeout="10s") as client:
                held = hold_slot(client, "box-big")  # busy until it is killed
                head = start_cli(*args, *DEMO_DATA, "--results-dir", tmp_path / "r")
                wait_while_running(head, lambda: logged(tmp_path / "r", "stage_moved"))
                boxes["box-big"].kill()  # with the task that held it
                boxes["box-big"].wait()
                del held
                if another_joins:
                    boxes["box-big-2"] = start_box(scheduler, "box-big-2", later)
                out, err = head.communicate(timeout=120)
    rows = samples(tmp_path / "r").values()
    assert big.state.work[("answers", "qwen2.5:7b")] == 0
    if another_joins:
        assert head.returncode == 0, out + err
        assert later.state.work[("answers", "qwen2.5:7b")] == 3 and all(r["answer"] and not r["error"] for r in rows)
    else:
        assert head.returncode == 1, out + err
        assert all("box-big left before it could run there" in r["error"] for r in rows) and len(rows) == 3


def test_a_box_that_joins_after_the_plan_with_other_sources_is_refused_and_its_task_runs_on_a_checked_box(scheduler, tmp_path):
    """box-a is checked at the plan and held busy; box-b joins later from an edited copy of src/, takes a stage task,
    refuses it (its ragsweep sources differ), and the task goes back to box-a. box-b loads nothing."""
    edited = tmp_path / "checkout"
    shutil.copytree(BENCHMARK.parent, edited / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (edited / "src" / "ragsweep" / "fmt.py").open("a").write("# edited on this box only\n")
    with OllamaEmulator() as a, OllamaEmulator() as b:
        with killed_at_end([start_box(scheduler, "box-a", a)]) as boxes:
            wait_for(scheduler, 1)
            with distributed.Client(scheduler, timeout="10s") as client:
                release = hold_slot(client, "box-a")
                args = ["--backend", "ollama", "--cluster", scheduler, *matrix("llama3.2:3b", "bm25", 3), "--quiet"]
                head = start_cli(*args, *DEMO_DATA, "--results-dir", tmp_path / "r")
                wait_while_running(head, lambda: logged(tmp_path / "r", "stage_start"))  # the plan is done
                late = [sys.executable, edited / "src" / "benchmark.py", *command("worker", scheduler)[2:]]
                late += ["--name", "box-b", "--backend", "ollama", "--ollama-host", b.url]
                boxes.append(subprocess.Popen(late, env=emulated_gpu_env(b), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                wait_while_running(head, lambda: logged(tmp_path / "r", "box_refused"))
                release()
                out, err = head.communicate(timeout=120)
    assert head.returncode == 0, out + err
    assert not b.state.loads and a.state.work[("answers", "llama3.2:3b")] == 3
    [refused] = [e for e in events_of(tmp_path / "r") if e["event"] == "box_refused"]
    assert refused["box"] == "box-b" and refused["message"].startswith("box box-b has ragsweep ")
    assert all(r["answer"] and not r["error"] for r in samples(tmp_path / "r").values())


def test_sigterm_on_the_head_stops_the_boxes_and_they_unload(scheduler, tmp_path):
    import signal

    with OllamaEmulator(call_s=0.05) as a:
        box = start_box(scheduler, "box-a", a)
        try:
            wait_for(scheduler, 1)
            head = start_cli(*head_args(scheduler, tmp_path / "r"))
            wait_while_running(head, lambda: any(a.state.work[("answers", m)] >= 2 for m in ("llama3.2:3b", "qwen2.5:7b")))
            head.send_signal(signal.SIGTERM)
            out, err = head.communicate(timeout=60)
            deadline = time.monotonic() + 30
            while any(r.stopping_since is None for r in a.state.runners.values()) and time.monotonic() < deadline:
                time.sleep(0.1)  # the box leaves its stage at the next answer and unloads
            resident = [name for name, r in a.state.runners.items() if r.stopping_since is None]
        finally:
            box.kill()
    assert head.returncode == 143, out + err
    assert "interrupted" in out and "run the same command again to resume" in out
    assert resident == []
    assert (latest_run_dir(tmp_path / "r") / "report.md").is_file()


def make_certificates(folder) -> dict[str, str]:
    """A throwaway CA and one certificate it signed for 127.0.0.1, used by the scheduler, the box and the head alike."""
    folder.mkdir(exist_ok=True)
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make test certificates")
    openssl = lambda *args: subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)  # noqa: E731
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "box.key", "-out", "box.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "san.ext"]
    openssl("x509", "-req", "-in", "box.csr", *signing, "-out", "box.pem", "-days", "1")
    return {"ca": str(folder / "ca.pem"), "cert": str(folder / "box.pem"), "key": str(folder / "box.key")}


def test_a_tls_scheduler_serves_boxes_and_head_that_hold_its_certificates_and_refuses_plain_tcp(tmp_path):
    from distributed.security import Security

    from ragsweep.cluster import security

    files = make_certificates(tmp_path)
    tls = security("tls://x", files["ca"], files["cert"], files["key"])  # what the head and the box build from their settings
    cert, key = files["cert"], files["key"]
    scheduler_tls = Security(
        tls_ca_file=files["ca"],
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )
    with (
        distributed.LocalCluster(
            n_workers=0,
            processes=False,
            protocol="tls://",
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
            security=scheduler_tls,
        ) as cluster,
        OllamaEmulator() as emu,
    ):
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        flags = ["--tls-ca-file", files["ca"], "--tls-cert", files["cert"], "--tls-key", files["key"]]
        box = subprocess.Popen(
            command("worker", address, "--name", "box-tls", "--backend", "ollama", "--ollama-host", emu.url, *flags),
            env=emulated_gpu_env(emu),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with distributed.Client(address, timeout="10s", security=tls) as client:
                client.wait_for_workers(1, timeout=60)
            config = tmp_path / "run.yaml"
            config.write_text(
                f"cluster_tls_ca_file: {files['ca']}\ncluster_tls_cert: {files['cert']}\ncluster_tls_key: {files['key']}\n"
                "cluster_wait_s: 2\n"
            )
            common = ["--backend", "ollama", "--cluster", address, *matrix("llama3.2:3b", "bm25", 2), "--quiet"]
            result = run_cli("--config", config, *common, *DEMO_DATA, "--results-dir", tmp_path / "r")
            plain = run_cli(*common, *DEMO_DATA, "--results-dir", tmp_path / "plain", timeout=60)
            other = make_certificates(tmp_path / "other")  # a certificate the scheduler's CA did not sign
            (tmp_path / "other.yaml").write_text(
                f"cluster_tls_ca_file: {other['ca']}\ncluster_tls_cert: {other['cert']}\ncluster_tls_key: {other['key']}\n"
            )
            stranger = run_cli("--config", tmp_path / "other.yaml", *common, *DEMO_DATA, "--results-dir", tmp_path / "o", timeout=60)
        finally:
            box.kill()
    assert result.returncode == 0, result.stdout + result.stderr
    assert emu.state.work[("answers", "llama3.2:3b")] == 2  # the answers were made on the box, over TLS
    assert all(r["answer"] and not r["error"] for r in samples(tmp_path / "r").values())
    assert plain.returncode == 2 and f"{address} needs a CA file, a certificate and a key: set cluster_tls_ca_file" in plain.stderr
    assert (
        stranger.returncode == 3 and f"no Dask scheduler at {address}" in stranger.stderr and stranger.stderr.count("\n") == 1
    )  # the wrong certificate, no way in


def test_a_box_behind_a_tunnel_reaches_the_scheduler_through_it_and_serves_on_its_port(scheduler, tmp_path):
    """The README's SSH recipe on one machine: the box dials a forwarded port (ssh -L), not the scheduler's, and
    `--port` fixes where the head finds the box (what ssh -R forwards)."""
    port = free_port()
    with Forward(int(scheduler.rsplit(":", 1)[1])) as tunnel, OllamaEmulator() as emu:
        flags = ["--name", "box-t", "--backend", "ollama", "--ollama-host", emu.url, "--port", port]
        box = subprocess.Popen(
            command("worker", f"tcp://127.0.0.1:{tunnel.port}", *flags),
            env=emulated_gpu_env(emu),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(scheduler, 1)
            with distributed.Client(scheduler, timeout="10s") as client:
                [address] = client.scheduler_info(n_workers=-1)["workers"]
            args = ["--backend", "ollama", "--cluster", scheduler, *matrix("llama3.2:3b", "bm25", 2), "--quiet"]
            result = run_cli(*args, *DEMO_DATA, "--results-dir", tmp_path)
        finally:
            box.kill()
    assert address == f"tcp://127.0.0.1:{port}" and tunnel.connections >= 1
    assert result.returncode == 0, result.stdout + result.stderr
    assert emu.state.work[("answers", "llama3.2:3b")] == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_box_within_cluster_wait_s_is_exit_3_naming_the_scheduler(scheduler, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("cluster_wait_s: 1\n")
    result = run_cli("--config", config, "--backend", "ollama", "--cluster", scheduler, "--results-dir", tmp_path, "--dry-run", timeout=60)
    assert result.returncode == 3 and f"no worker with a free gpu slot joined the Dask scheduler {scheduler} within 1 s" in result.stderr


def test_a_dead_scheduler_is_exit_3_within_seconds(tmp_path):
    port = free_port()
    started = time.monotonic()
    result = run_cli("--backend", "ollama", "--cluster", f"tcp://127.0.0.1:{port}", "--results-dir", tmp_path, "--dry-run", timeout=60)
    assert result.returncode == 3 and "no Dask scheduler at" in result.stderr and result.stderr.count("\n") == 1
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("address", ["foo", "http://127.0.0.1:8786", "tcp://127.0.0.1:99999", "tcp://:8786"])
def test_a_scheduler_address_that_is_not_one_is_exit_2_at_once_on_the_head_and_the_box(tmp_path, address):
    head = run_cli("--backend", "ollama", "--cluster", address, "--results-dir", tmp_path, "--dry-run", timeout=60)
    box = run_cli("worker", address, "--name", "box-a", timeout=60)
    expected = "not a Dask scheduler address: use tcp://HOST:8786, or tls://HOST:8786 with TLS"
    assert head.returncode == 2 and expected in head.stderr and head.stderr.count("\n") == 1
    assert box.returncode == 2 and f"worker: {address!r} is {expected}" in box.stderr and box.stderr.count("\n") == 1


def test_versions_must_match(monkeypatch):
    from ragsweep import cluster

    class Client:
        def get_versions(self, check):
            pass

        def run(self, function):
            return {"tcp://10.0.0.2:1": {"box": "box-b", "ragsweep": "abc", "torch": "2.11.0"}}

    with pytest.raises(Exception, match="box box-b has torch 2.11.0, the head has 2.13.0"):
        cluster.require_same_versions(Client(), {"ragsweep": "abc", "torch": "2.13.0"})


def test_tls_settings_are_all_or_nothing_and_match_the_address(tmp_path):
    from ragsweep.cluster import security
    from ragsweep.errors import ConfigError

    (tmp_path / "ca.pem").write_text("x")
    ca = tmp_path / "ca.pem"
    assert security("tcp://127.0.0.1:8786", None, None, None) is None  # an SSH tunnel: plain TCP
    with pytest.raises(ConfigError, match=r"tls://h:1 needs a CA file, a certificate and a key: set --tls-ca-file"):
        security("tls://h:1", ca, None, None, where="--tls-ca-file, --tls-cert and --tls-key")
    with pytest.raises(ConfigError, match=r"TLS files are set but the address is not tls:// — use tls://h:1"):
        security("tcp://h:1", ca, ca, ca)
    with pytest.raises(ConfigError, match=r"the TLS key .*nope.key does not exist \(cluster_tls_ca_file"):
        security("tls://h:1", ca, ca, tmp_path / "nope.key")


def start_scheduler(*how: str, env=None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [*how, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    address = f"tcp://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, address
        time.sleep(0.2)
    raise AssertionError("the scheduler never listened")


def test_the_readmes_recipe_runs_as_written(tmp_path):
    """README: `python src/benchmark.py scheduler ...` on the head, `worker` on each box, the head with --cluster."""
    scheduler, address = start_scheduler(*command("scheduler"))
    with OllamaEmulator() as a, killed_at_end([scheduler, start_box(address, "box-a", a)]):
        wait_for(address, 1)
        result = run_cli(*head_args(address, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = samples(tmp_path)
    assert len(rows) == 2 * 2 * 6 and all(r["answer"] and not r["error"] for r in rows.values())


def test_a_scheduler_that_cannot_read_the_tasks_stops_the_run_with_how_to_start_one():
    """Reported on a fresh machine: `dask scheduler` from another environment failed every stage with this message. It
    could not be reproduced here (a scheduler that cannot import ragsweep still ran every stage with distributed
    2026.8.0), so Dask's failed future is stood in for: the head must stop (exit 3, resumable), not fail every sample."""
    from types import SimpleNamespace

    from ragsweep import cluster
    from ragsweep.errors import BackendUnavailableError

    error = RuntimeError(
        "Error during deserialization of the task graph. This frequently occurs if the Scheduler and Client have different environments."
    )
    failed = SimpleNamespace(status="error", exception=lambda: error)
    ctx = SimpleNamespace(backend=SimpleNamespace(address="tcp://127.0.0.1:8786"))
    with pytest.raises(BackendUnavailableError, match=r"start it with `python src/benchmark.py scheduler"):
        cluster._finish(ctx, cluster.Stage("llama3.2:3b", {"stage": "generate"}, done=None, future=failed))
