"""report.html: parses, has every section, escapes what came from the test set or a model, rebuilds from the store alone."""

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cli import emulated_gpu_env, ollama_flags
from cli import run_cli as cli
from conftest import write_jsonl
from judge_server import JudgeServer, judge_flags
from ollama_emulator import OllamaEmulator

VOID = {"meta", "img", "br", "hr", "input", "link"}
INJECTED = "What is <script>alert('x')</script> the capital of France?"


class StrictParser(HTMLParser):
    """Every non-void tag closed, in order: the page is well formed."""

    def __init__(self):
        super().__init__()
        self.stack, self.headings, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A judged run on a test set with injected markup, then a second run with another top-k."""
    tmp = tmp_path_factory.mktemp("html")
    corpus = write_jsonl(
        tmp / "corpus.jsonl",
        [
            {"id": "d1", "title": "Paris <b>bold</b>", "text": "Paris is the capital of France, on the river Seine."},
            {"id": "d2", "title": "Cats", "text": "Cats sleep most of the day and hunt mice at night."},
            {"id": "d3", "title": "Rust", "text": "Rust is a systems programming language focused on memory safety."},
        ],
    )
    testset = write_jsonl(
        tmp / "testset.jsonl",
        [
            {"id": "q1", "question": INJECTED, "reference": "Paris", "reference_context_ids": ["d1"]},
            {"id": "q2", "question": "What do cats hunt at night?", "reference": "mice", "reference_context_ids": ["d2"]},
        ],
    )
    results = tmp / "results"
    with OllamaEmulator() as emu, JudgeServer() as judge:
        env = emulated_gpu_env(emu)
        common = [
            *ollama_flags(emu),
            "--llms",
            "llama3.2:3b,qwen2.5:7b",
            "--embeddings",
            "nomic-embed-text,bm25",
            "--corpus",
            str(corpus),
            "--testset",
            str(testset),
            "--results-dir",
            str(results),
            "--quiet",
            *judge_flags(judge),
        ]
        first = cli(*common, "--top-k", "1", env=env)
        assert first.returncode == 0, first.stderr
        baseline = max(p.name for p in results.iterdir() if p.is_dir())
        second = cli(*common, "--top-k", "2", "--baseline", baseline, env=env)
        assert second.returncode == 0, second.stderr
    run_id = max(p.name for p in results.iterdir() if p.is_dir())
    return results, baseline, run_id


def page(results: Path, run_id: str) -> str:
    return (results / run_id / "report.html").read_text()


def test_html_parses_and_has_every_section(two_runs):
    results, baseline, run_id = two_runs
    parser = StrictParser()
    parser.feed(page(results, run_id))
    assert parser.stack == []
    for heading in (
        "The seed's targets",
        "Leaderboard",
        "Matrix (LLM × embedding model)",
        "Quality against speed and memory",
        "Memory",
        "Failures and NaN",
        "Faults and recoveries",
        "Notes",
        f"Compared with {baseline}",
        "Samples",
    ):
        assert heading in parser.headings, heading


def test_injected_markup_is_shown_as_text(two_runs):
    results, _, run_id = two_runs
    html = page(results, run_id)
    assert "What is &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; the capital of France?" in html
    assert html.count("<script>") == 1  # ours: the table sorter
    assert "<b>bold</b>" not in html


def test_plots_are_embedded_pngs_and_nothing_is_fetched(two_runs):
    results, _, run_id = two_runs
    html = page(results, run_id)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 10  # 9 heatmaps + trade-offs + timeline + load times
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained


def test_leaderboard_and_baseline_deltas(two_runs):
    results, baseline, run_id = two_runs
    html = page(results, run_id)
    assert '<table class="sortable">' in html and "Δ recall_at_k" in html and "Δ faithfulness" in html
    assert re.search(r'<span class="(up|down|muted)">[+-]?\d\.\d{3}</span>', html)
    assert "peak_gb" in html and "≈ best" in html or ">best<" in html
    targets = re.findall(r'<li><span class="(pass|fail)">(PASS|FAIL)</span> ([^<]+)', html)
    assert len(targets) == 4 and all(kind == "pass" and word == "PASS" for kind, word, _ in targets), (
        targets
    )  # every target, not one of them
    assert "status <b>done</b>" in html  # rendered after the final status was stored, not "running"


def test_report_rebuilds_from_the_store_without_models(two_runs):
    results, baseline, run_id = two_runs
    (results / run_id / "report.html").unlink()
    rebuilt = cli("report", run_id, "--results-dir", str(results), "--baseline", baseline)  # no emulator, no judge running
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"Compared with {baseline}" in page(results, run_id)
    compare = cli("report", "--compare", baseline, run_id, "--results-dir", str(results))
    assert compare.returncode == 0 and "report.html" in compare.stdout
    missing = cli("report", "nope", "--results-dir", str(results))
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
