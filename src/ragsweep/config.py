"""One resolved configuration per run: built-in defaults < config file < env/.env < CLI flags.

Every value remembers where it came from, so an error names the file and line, the flag or the
environment variable to fix. Secrets never enter this object (the judge reads keys from the
environment itself), so dumping it into run.json is safe.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import httpx
import yaml
from dotenv import find_dotenv, load_dotenv
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from .backends import BACKENDS
from .backends.ollama import normalize_host
from .errors import ConfigError
from .fmt import shown
from .metrics import JUDGE_METRICS
from .redact import redact_all
from .testset import utf8_lines

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
MAX_TOKENS = 2**20  # a context or answer cap beyond any local model's; larger overflows the servers' integer fields

# Environment variables read as settings (also listed in .env.example).
ENV_VARS = {
    "RAGSWEEP_BACKEND": "backend",
    "RAGSWEEP_LLMS": "llms",
    "RAGSWEEP_EMBEDDINGS": "embeddings",
    "RAGSWEEP_JUDGE": "judge",
    "RAGSWEEP_RESULTS_DIR": "results_dir",
    "OLLAMA_HOST": "ollama_host",
    "RAGSWEEP_CLUSTER": "cluster",
    "RAGSWEEP_SERVER_URL": "server_url",
}
LIST_FIELDS = {"llms", "embeddings"}
PATH_FIELDS = {"corpus", "testset", "results_dir"}


def scheduler_address(value: str) -> str:
    """A Dask scheduler address, tcp://HOST:PORT or tls://HOST:PORT (HOST:PORT means tcp://); else a ValueError that shows one."""
    address = value if "://" in value else f"tcp://{value}"
    scheme, rest = address.split("://", 1)
    host, _, port = rest.rpartition(":")
    if "@" in rest:  # Dask has no user or password in an address; the part before '@' is never echoed
        raise ValueError(
            "not a Dask scheduler address: Dask addresses hold no user or password — use tcp://HOST:8786, or TLS (tls://) to authenticate"
        )
    if scheme not in ("tcp", "tls") or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not a Dask scheduler address: use tcp://HOST:8786, or tls://HOST:8786 with TLS")
    return address


HOUR, WEEK = 3600, 7 * 24 * 3600  # the ceilings of durations: past them a timer overflows, and no night is that long
FLAGS = {
    "request_timeout_s": "--request-timeout",
    "server_start_timeout_s": "--server-start-timeout",
}  # settings whose flag is not --NAME-WITH-DASHES


class Settings(BaseModel):
    """The resolved run configuration, saved in run.json beside every result."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf or nan in a timeout overflowed deep in a library

    backend: str = "local"  # a name in ragsweep.backends.BACKENDS
    llms: list[str] = Field(default_factory=lambda: ["smollm2-135m", "gemma3-270m"], min_length=1)
    embeddings: list[str] = Field(default_factory=lambda: ["all-minilm-l6-v2", "bm25"], min_length=1)
    corpus: Path = REPO_ROOT / "data" / "demo" / "corpus.jsonl"
    testset: Path = REPO_ROOT / "data" / "demo" / "testset.jsonl"
    limit: int | None = Field(default=None, ge=1, le=2**31 - 1)  # questions used; None = all
    top_k: int = Field(default=3, ge=1, le=100)  # passages retrieved per question
    chunk_size: int = Field(default=400, ge=16, le=10**6)  # words per chunk; the demo passages (<= 327) fit whole
    chunk_overlap: int = Field(default=50, ge=0)  # words shared by neighbouring chunks
    max_tokens: int = Field(default=48, ge=1, le=MAX_TOKENS)  # answer cap: answers are short spans; small models ramble
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)  # 0 = deterministic, comparable answers
    # each LLM's context window in tokens; None: sized per LLM to fit the longest prompt + max_tokens where the server knows
    # the model's own context length (Ollama), else 4096 (3 passages of 400 words fit)
    num_ctx: int | None = Field(default=None, ge=256, le=MAX_TOKENS)
    # generation requests in flight per LLM: None = found by measurement (up to 16) on a server that answers several at once
    # (Ollama with OLLAMA_NUM_PARALLEL > 1); N = exactly N. The local backend answers one at a time.
    generation_concurrency: int | None = Field(default=None, ge=1, le=512)  # 512: Ollama's queue (OLLAMA_MAX_QUEUE)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)  # llama.cpp takes a uint32 and reads -1 as "random"; Ollama a Go int
    embed_batch_size: int | None = Field(default=None, ge=1, le=2**16)  # None = platform default
    pressure_threshold_gb: float | None = Field(default=None, gt=0, le=1e6)  # None = platform default (10 of 12 GB on a card)
    baseline_target_gb: float | None = Field(default=None, gt=0, le=1e6)  # None = platform default (2 GB on a 12 GB card)
    memory_sample_s: float = Field(
        default=1.0, gt=0, le=HOUR
    )  # while a model is resident, read memory this often (peaks between snapshots)
    unload_timeout_s: float | None = Field(default=None, gt=0, le=HOUR)  # None = 30 s: wait this long for memory to come back
    # watchdog per model call; None = 120 s + 2 s per max_tokens (a first call may load the model)
    request_timeout_s: float | None = Field(default=None, gt=0, le=WEEK)
    # a backend that stops answering mid-run is retried this long, then the run stops (exit 3, resumable)
    backend_retry_s: float = Field(default=120.0, ge=0, le=WEEK)
    # failed samples before the run stops: a whole count (>= 1) or a share of all samples (between 0 and 1)
    max_failures: float | None = Field(default=None, gt=0, le=2**31)
    judge: str | None = None  # "none", a LiteLLM model name, or None: gpt-4o-mini when OPENAI_API_KEY is set, else none
    judge_base_url: str | None = None  # OpenAI-compatible server for openai/NAME judges; Ollama host for ollama_chat/NAME
    judge_embeddings: str | None = None  # for answer_relevancy; default text-embedding-3-small, or the first Ollama embedding model
    judge_concurrency: int | None = Field(
        default=None, ge=1, le=1024
    )  # judge calls in flight; None = platform default (2 on a CUDA card, else 4)
    judge_timeout_s: float = Field(default=120.0, gt=0, le=WEEK)  # per judge call
    judge_retries: int = Field(default=4, ge=0, le=100)  # per call, on 429 / 5xx / timeout / connection, with backoff
    judge_parse_retries: int = Field(default=2, ge=0, le=100)  # re-asks when the judge's JSON does not parse
    judge_max_tokens: int = Field(default=2048, ge=256, le=MAX_TOKENS)  # small judges stop mid-JSON below 2048
    judge_num_ctx: int = Field(default=8192, ge=2048, le=MAX_TOKENS)  # an Ollama judge's context: its prompts are long
    judge_metric_timeout_s: dict[str, float] = Field(
        default_factory=dict
    )  # per metric, e.g. {faithfulness: 300}: seconds for all of a cell's calls
    judge_metric_parse_retries: dict[str, int] = Field(
        default_factory=dict
    )  # per metric re-asks on unparseable JSON, e.g. {context_recall: 4}
    judge_repeats: int = Field(default=1, ge=1, le=20)  # judge each cell N times, independently: the judge's noise goes into the intervals
    max_judge_cost: float | None = Field(default=None, gt=0, le=1e9)  # USD: stop judging cleanly when reached
    baseline: str | None = None  # an earlier run id: report.html adds per-metric deltas against it
    trust_remote_code: bool = False  # load custom modules a sentence-transformers folder names in modules.json (only folders you trust)
    fresh: bool = False  # ignore the caches (recompute everything; results are still cached for next time)
    results_dir: Path = REPO_ROOT / "results"
    cluster: str | None = None  # a Dask scheduler (tcp://HEAD:8786 or tls://…): model stages run on its GPU boxes; None = here
    cluster_wait_s: float = Field(
        default=60.0, gt=0, le=WEEK
    )  # how long to wait for a box with a free gpu slot (at start, or after losing all)
    cluster_tls_ca_file: Path | None = None  # Dask TLS for boxes that cannot tunnel: the CA, this head's certificate and key
    cluster_tls_cert: Path | None = None
    cluster_tls_key: Path | None = None
    ollama_host: str = "http://localhost:11434"
    # --backend server: launch one OpenAI-compatible server per model from this template ({model}, {port}, {host}) ...
    server_command: str | None = None
    server_url: str | None = None  # ... or use the one someone else runs at this URL (never stopped by ragsweep)
    server_start_timeout_s: float = Field(default=600.0, gt=0, le=WEEK)  # a launched server must answer /v1/models by then

    @field_validator("max_failures")
    @classmethod
    def _count_or_share(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError("must be a whole number of failures (e.g. 5) or a share between 0 and 1 (e.g. 0.2)")
        return value

    @field_validator("ollama_host", "judge_base_url", "server_url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        try:
            url = httpx.URL(normalize_host(value))
        except (httpx.InvalidURL, ValueError) as error:
            raise ValueError(f"not a valid URL ({error})") from None
        if url.scheme not in {"http", "https"}:
            raise ValueError(f"not an http:// or https:// URL (scheme {shown(url.scheme)})")
        if info.field_name in ("judge_base_url", "server_url") and "://" not in value:  # LiteLLM takes it as written: no scheme, no call
            raise ValueError("needs its scheme, e.g. http://127.0.0.1:8000/v1")
        return value

    @field_validator("cluster")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        return scheduler_address(value) if value else None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {shown(value)} (known: {', '.join(BACKENDS)})")
        return value

    @field_validator("llms", "embeddings")
    @classmethod
    def _each_model_once(cls, value: list[str]) -> list[str]:
        twice = next((name for index, name in enumerate(value) if name in value[:index]), None)
        if twice is not None:  # the plan would count its samples twice, and the run would never answer half of them
            raise ValueError(f"{shown(twice)} is named twice — name each model once")
        return value

    @field_validator("judge_metric_timeout_s", "judge_metric_parse_retries")
    @classmethod
    def _known_metrics(cls, value: dict, info: ValidationInfo) -> dict:
        unknown = sorted(set(value) - set(JUDGE_METRICS))
        if unknown:
            raise ValueError(f"unknown metric {shown(unknown[0])} (known: {', '.join(JUDGE_METRICS)})")
        low, high = (0, 100) if info.field_name == "judge_metric_parse_retries" else (1e-3, WEEK)  # re-asks, or seconds
        out = next((metric for metric, number in value.items() if not low <= number <= high), None)
        if out is not None:
            raise ValueError(f"{out}: {shown(value[out])} is not between {low:g} and {high:g}")
        return value

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def origin(self, field: str) -> str:
        """Where a setting's value came from: a flag, an environment variable, a file and line, or the built-in default."""
        return self._origins.get(field, "built-in default")

    def public_dict(self) -> dict[str, Any]:
        """What run.json and the store keep: every value, with passwords and tokens in URLs masked."""
        return redact_all(self.model_dump(mode="json"))

    @property
    def watchdog_s(self) -> float:
        return self.request_timeout_s or 120.0 + 2.0 * self.max_tokens

    def platform_overrides(self) -> dict[str, Any]:
        gb = lambda value: None if value is None else int(value * 1e9)  # noqa: E731
        return {
            "embed_batch_size": self.embed_batch_size,
            "judge_concurrency": self.judge_concurrency,  # so run.json's platform records what ran
            "pressure_threshold_bytes": gb(self.pressure_threshold_gb),
            "baseline_target_bytes": gb(self.baseline_target_gb),
            "unload_timeout_s": self.unload_timeout_s,
        }


def load_env_file() -> None:
    """.env from the working directory (or a parent) into the environment; real environment variables win."""
    path = find_dotenv(usecwd=True)
    if path:
        for _ in utf8_lines(Path(path)):  # a latin-1 .env is one clear line, not a UnicodeDecodeError
            pass
        load_dotenv(path)


def load_settings(config_path: Path | None, cli: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Merge the layers, lowest first: built-in defaults < the config file < environment/.env < CLI flags.

    Without --config, configs/demo.yaml is the config file and counts as the defaults, so the
    environment still overrides it. Each value remembers where it came from (`settings.origin(field)`).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}

    path = config_path or DEFAULT_CONFIG
    for key, (value, line) in _read_yaml(path).items():
        values[key] = _coerce(key, value, path.parent)
        origins[key] = f"{path}:{line}: field '{key}'"

    for var, field in ENV_VARS.items():
        if environ.get(var):
            values[field] = _coerce(field, environ[var], Path.cwd())
            origins[field] = f"environment variable {var}"

    for key, value in cli.items():
        if value is not None:
            values[key] = _coerce(key, value, Path.cwd())
            origins[key] = FLAGS.get(key, f"--{key.replace('_', '-')}")

    try:
        settings = Settings.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_describe_validation_error(error, origins, path)) from None
    settings._origins = origins
    _check_paths(settings, origins)
    if settings.chunk_overlap >= settings.chunk_size:
        raise ConfigError(
            f"{origins.get('chunk_overlap', 'chunk_overlap')}: chunk_overlap ({settings.chunk_overlap}) "
            f"must be smaller than chunk_size ({settings.chunk_size})"
        )
    return settings


def _read_yaml(path: Path) -> dict[str, tuple[Any, int]]:
    """Top-level mapping of the config file, each value with its line number."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} — pass --config with an existing YAML file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"config file {path}: cannot read it ({error.strerror or error}) — check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {column}) — save it as UTF-8") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    _refuse_repeated_keys(node, path)
    lines = {key_node.value: key_node.start_mark.line + 1 for key_node, _ in node.value}
    return {key: (value, lines.get(key, 1)) for key, value in data.items()}


def _refuse_repeated_keys(node: yaml.Node, path: Path, seen: set[int] | None = None) -> None:
    """YAML keeps the last of two equal keys silently; the user meant one of them, and we cannot know which.
    Each node is visited once: an alias shares its node, and may even contain itself (`&a [*a]`)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_repeated_keys(item, path, seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[Any, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.value in first:
            raise ConfigError(f"{path}:{line}: '{key_node.value}' is set twice (first on line {first[key_node.value]}) — keep one")
        first[key_node.value] = line
        _refuse_repeated_keys(value_node, path, seen)


def _coerce(field: str, value: Any, base: Path) -> Any:
    """Comma lists become lists; relative paths resolve against their source's folder."""
    if field in LIST_FIELDS and isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if field in PATH_FIELDS and isinstance(value, (str, Path)):
        return (base / Path(value).expanduser()).resolve()
    return value


def _describe_validation_error(error: ValidationError, origins: dict[str, str], path: Path) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(field, list(Settings.model_fields), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(Settings.model_fields)}"
        return f"{origins.get(field, path)}: unknown setting '{field}' — {hint}"
    where = origins.get(field, f"setting '{field}'")
    return f"{where}: {first['msg'].removeprefix('Value error, ')} (got {shown(first.get('input'))})"


def _check_paths(settings: Settings, origins: dict[str, str]) -> None:
    for field in ("corpus", "testset"):
        path = getattr(settings, field)
        if not path.is_file():
            raise ConfigError(f"{origins.get(field, field)}: {field} file not found: {path}")
