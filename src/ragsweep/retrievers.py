"""What can retrieve: a dense embedding model on the backend, `bm25`, or a calibration baseline.

The two baselines bracket every real retriever: `oracle` hands the LLM the question's reference
passages (what a perfect retriever would find), `none` hands it nothing (closed book). Neither
loads a model. The plan resolves names here before any work; the retrieve stage ranks with them.
"""

from __future__ import annotations

from importlib.metadata import version

from .backends.base import Backend, ModelInfo

LEXICAL = "bm25"
ORACLE = "oracle"  # the reference passages: retrieval metrics are 1.0 by construction
CLOSED_BOOK = "none"  # no passages, no context section in the prompt: retrieval metrics are empty (NaN)
BASELINES = (ORACLE, CLOSED_BOOK)


def describe_retriever(backend: Backend, name: str) -> ModelInfo:
    """The retriever as the plan sees it; a dense model is resolved by the backend (may raise ModelNotFoundError)."""
    if name == LEXICAL:
        return ModelInfo(LEXICAL, "embedding", f"bm25s-{version('bm25s')}", "MIT (bm25s)", None, "bm25s", {"engine": "bm25s"})
    if name in BASELINES:
        return ModelInfo(name, "embedding", f"{name}-baseline-v1", None, None, "ragsweep", {"engine": "baseline"})
    return backend.describe(name, "embedding")


def needs_model(name: str) -> bool:
    """False for retrievers that load nothing (no memory discipline, no embedding cache)."""
    return name not in (LEXICAL, *BASELINES)
