"""The child process that holds one local model: load, answer requests over a pipe, exit.

Exiting is the unload: torch never returns freed memory to the OS inside a process and a CUDA
context dies only with its process, so a model's memory is certain to come back only this way
(the same shape as Ollama's runner processes).
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

# Set before the model libraries are imported in this fresh interpreter.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def serve(conn, spec: dict[str, Any]) -> None:
    """Entry point of the child: spec says what to load; then one request at a time until 'close'."""
    _redirect_output(spec.get("log_path"))
    try:
        model = _open(spec)
    except BaseException as error:  # report any load failure to the parent instead of dying mute
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return  # the parent went away or was interrupted: exit, which frees everything
        if op == "close":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", model[op](payload)))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"))


def _redirect_output(log_path: str | None) -> None:
    """Model libraries write to the C-level stdout/stderr; keep that out of the user's terminal."""
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)


def _open(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["engine"] == "sentence-transformers":
        return _open_sentence_transformer(spec)
    if spec["engine"] == "llama.cpp":
        return _open_llama(spec)
    raise ValueError(f"unknown engine {spec['engine']!r}")


def _open_sentence_transformer(spec: dict[str, Any]) -> dict[str, Any]:
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.disable_progress_bar()  # its bars would tear through the run's own

    device = spec["device"] if spec["device"] in {"cuda", "mps"} else "cpu"
    encoder = SentenceTransformer(
        spec["path"], device=device, local_files_only=True, trust_remote_code=spec.get("trust_remote_code", False)
    )
    if spec.get("half_precision"):  # the out-of-memory ladder's second step: fp16 weights
        encoder = encoder.half()

    def embed(payload: dict[str, Any]):
        start = time.perf_counter()
        vectors = encoder.encode(
            payload["texts"], batch_size=payload["batch_size"], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype("float32"), time.perf_counter() - start

    return {"embed": embed}


def _open_llama(spec: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    options = spec["options"]
    llm = llama_cpp.Llama(
        model_path=spec["path"],
        n_ctx=options["num_ctx"],
        n_threads=os.cpu_count(),
        n_gpu_layers=options.get("num_gpu") if options.get("num_gpu") is not None else (-1 if spec["device"] in {"cuda", "mps"} else 0),
        seed=options["seed"],
        verbose=False,
    )
    sampling = dict(max_tokens=options["max_tokens"], temperature=options["temperature"], stop=list(options["stop"]), repeat_penalty=1.1)

    def generate(payload: dict[str, Any]):
        start = time.perf_counter()
        if spec["prompt_style"] == "chat":
            result = llm.create_chat_completion(messages=payload["messages"], **sampling)
            text = result["choices"][0]["message"]["content"] or ""
        else:
            result = llm.create_completion(payload["completion"], **sampling)
            text = result["choices"][0]["text"]
        usage = result.get("usage") or {}
        return {
            "text": text.strip(),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "seconds": time.perf_counter() - start,
        }

    return {"generate": generate}
