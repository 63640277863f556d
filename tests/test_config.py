from pathlib import Path

import pytest

from ragsweep.config import DEFAULT_CONFIG, load_settings
from ragsweep.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_demo_config_resolves_paths_relative_to_the_file():
    settings = load_settings(None, {}, environ={})
    assert settings.corpus == (DEFAULT_CONFIG.parent / "../data/demo/corpus.jsonl").resolve()
    assert settings.llms == ["smollm2-135m", "gemma3-270m"] and settings.limit == 20


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    """One key set in every layer, the layers peeled from the top: any two swapped and an assert fails."""
    demo = (
        f"corpus: {DEFAULT_CONFIG.parent / '../data/demo/corpus.jsonl'}\ntestset: {DEFAULT_CONFIG.parent / '../data/demo/testset.jsonl'}\n"
    )
    config = write(tmp_path, f"llms: [from-file]\n{demo}")
    env = {"RAGSWEEP_LLMS": "from-env"}
    layers = [
        (load_settings(config, {"llms": "from-flag"}, environ=env), ["from-flag"], "--llms"),
        (load_settings(config, {"llms": None}, environ=env), ["from-env"], "environment variable RAGSWEEP_LLMS"),
        (load_settings(config, {}, environ={}), ["from-file"], f"{config}:1: field 'llms'"),
        (load_settings(write(tmp_path, demo), {}, environ={}), ["smollm2-135m", "gemma3-270m"], "built-in default"),
    ]
    for settings, llms, origin in layers:
        assert (settings.llms, settings.origin("llms")) == (llms, origin)


def test_the_environment_overrides_the_implicit_demo_config():
    """Without --config, configs/demo.yaml is the defaults: RAGSWEEP_* variables and .env take effect."""
    settings = load_settings(
        None, {}, environ={"RAGSWEEP_LLMS": "gemma3-270m", "RAGSWEEP_JUDGE": "gpt-4o-mini", "RAGSWEEP_BACKEND": "ollama"}
    )
    assert (settings.llms, settings.judge, settings.backend) == (["gemma3-270m"], "gpt-4o-mini", "ollama")
    assert settings.origin("llms") == "environment variable RAGSWEEP_LLMS" and settings.origin("top_k").startswith(f"{DEFAULT_CONFIG}:")


def test_unknown_key_names_file_line_and_key(tmp_path):
    config = write(tmp_path, "top_k: 3\ntop_kk: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {}, environ={})
    assert str(caught.value) == f"{config}:2: field 'top_kk': unknown setting 'top_kk' — did you mean 'top_k'?"


def test_bad_value_names_its_origin(tmp_path):
    config = write(tmp_path, "top_k: 0\n")
    with pytest.raises(ConfigError, match=r"run.yaml:1: field 'top_k': Input should be greater than or equal to 1"):
        load_settings(config, {}, environ={})
    with pytest.raises(ConfigError, match=r"--top-k: Input should be greater than or equal to 1"):
        load_settings(None, {"top_k": -1}, environ={})
    with pytest.raises(
        ConfigError, match=r"environment variable RAGSWEEP_BACKEND: unknown backend 'vllm' \(known: local, ollama, server\)"
    ):
        load_settings(write(tmp_path, ""), {}, environ={"RAGSWEEP_BACKEND": "vllm"})


def test_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", {}, environ={})
    with pytest.raises(ConfigError, match=r"--testset: testset file not found: .*missing.jsonl"):
        load_settings(None, {"testset": str(tmp_path / "missing.jsonl")}, environ={})


def test_invalid_yaml_and_overlap(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml:2: invalid YAML"):
        load_settings(write(tmp_path, "top_k: 3\n  bad: [\n"), {}, environ={})
    with pytest.raises(ConfigError, match="chunk_overlap \\(100\\) must be smaller than chunk_size \\(50\\)"):
        load_settings(None, {"chunk_size": 50, "chunk_overlap": 100}, environ={})


def test_per_metric_judge_settings_name_known_metrics(tmp_path):
    settings = load_settings(
        write(tmp_path, "judge_metric_timeout_s: {faithfulness: 300}\njudge_metric_parse_retries: {context_recall: 4}\n"), {}, environ={}
    )
    assert settings.judge_metric_timeout_s == {"faithfulness": 300.0} and settings.judge_metric_parse_retries == {"context_recall": 4}
    with pytest.raises(ConfigError, match=r"run.yaml:1: field 'judge_metric_timeout_s': unknown metric 'faithfulnes'"):
        load_settings(write(tmp_path, "judge_metric_timeout_s: {faithfulnes: 300}\n"), {}, environ={})


@pytest.mark.parametrize(
    "text, message",
    [
        ("top_k: 3\nllms: [a]\ntop_k: 4\n", ":3: 'top_k' is set twice (first on line 1) — keep one"),
        ("judge_metric_timeout_s:\n  faithfulness: 300\n  faithfulness: 30\n", ":3: 'faithfulness' is set twice (first on line 2)"),
    ],
)
def test_a_key_set_twice_is_refused_not_silently_the_last(tmp_path, text, message):
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {}, environ={})
    assert str(caught.value).startswith(f"{config}{message}")


def test_self_referencing_and_exploding_aliases_end_in_a_short_line(tmp_path):
    """`&a [*a]` recursed forever in the repeated-key check; nine levels of nine aliases (9**9 items) made a 226 MB 'one line'."""
    with pytest.raises(ConfigError, match=r"run.yaml:1: field 'llms': Input should be a valid string \(got \[\[\[\.\.\.\]\]\]\)"):
        load_settings(write(tmp_path, "llms: &a [*a]\n"), {}, environ={})
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "\n".join([*levels, "llms: *a8"]) + "\n"), {}, environ={})
    assert str(caught.value).startswith(f"{tmp_path / 'run.yaml'}:10: field 'llms': Input should be a valid string (got [[[...]")
    assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "key, value, bound",
    [
        ("seed", -1, "greater than or equal to 0"),
        ("seed", 2**32, "less than or equal to 2147483647"),
        ("num_ctx", 10**20, "less than or equal to 1048576"),
    ],
)
def test_numbers_the_model_servers_cannot_take_are_refused_up_front(key, value, bound):
    """llama.cpp reads seed -1 as 'random' (answers would be cached as if reproducible); beyond int64 Ollama cannot parse the request."""
    with pytest.raises(ConfigError, match=rf"--{key.replace('_', '-')}: Input should be {bound}"):
        load_settings(None, {key: value}, environ={})


def test_a_model_named_twice_is_refused(tmp_path):
    """The plan counted its samples twice, so a finished run said 'never answered' and exited 1."""
    with pytest.raises(ConfigError, match=r"^--embeddings: 'bm25' is named twice — name each model once"):
        load_settings(None, {"embeddings": "bm25,oracle,bm25"}, environ={})
    config = write(tmp_path, "llms: [a, b, a]\n")
    with pytest.raises(ConfigError, match=rf"^{config}:1: field 'llms': 'a' is named twice"):
        load_settings(config, {}, environ={})
    assert load_settings(None, {"embeddings": "bm25,oracle"}, environ={}).embeddings == ["bm25", "oracle"]
