"""Retrieve stage: per embedding model, top-k passages for every question, scored against the reference ids.

Dense models embed chunks and questions (batched, cached by model digest + text hash) and rank by
exact cosine similarity; `bm25` ranks lexically with bm25s and needs no model; the `oracle` and
`none` baselines store the reference passages or nothing. A model whose
vectors are all cached is not loaded at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .backends.base import ModelInfo
from .errors import ModelCallError
from .events import Event
from .interrupts import raise_if_signalled
from .lifecycle import relieve_pressure, resident_model
from .metrics import RETRIEVAL_METRICS, dedupe, mrr, ndcg_at_k, recall_at_k
from .progress import bar
from .retrievers import BASELINES, LEXICAL, ORACLE
from .run import RunContext
from .testset import Document, Question
from .words import CHUNK_WORD, LEXICAL_TOKEN

STAGE = "retrieve"


@dataclass(frozen=True)
class Chunk:
    id: str  # the document id when the document fits whole, else "<doc id>#<n>"
    doc_id: str
    text: str


def chunk_documents(documents: list[Document], size: int, overlap: int) -> list[Chunk]:
    """Split documents into windows of `size` words sharing `overlap` words; short ones stay whole. A window is the
    document's own text from its first word to its last, line breaks and all."""
    chunks: list[Chunk] = []
    for document in documents:
        words = [match.span() for match in CHUNK_WORD.finditer(document.text)]
        if len(words) <= size:
            chunks.append(Chunk(document.id, document.id, _with_title(document, document.text)))
            continue
        step = size - overlap
        for n, start in enumerate(range(0, max(len(words) - overlap, 1), step)):
            window = words[start : start + size]
            text = document.text[window[0][0] : window[-1][1]]
            chunks.append(Chunk(f"{document.id}#{n}", document.id, _with_title(document, text)))
    return chunks


def _with_title(document: Document, text: str) -> str:
    return f"{document.title}: {text}" if document.title else text


def retrieve_all(ctx: RunContext, retrievers: list[ModelInfo], chunks: list[Chunk], questions: list[Question]) -> list[str]:
    """Each retriever in turn (a model loaded once); returns the names that worked. A failed one is skipped with its reason."""
    usable = []
    for retriever in retrievers:
        try:
            retrieve(ctx, retriever, chunks, questions)
            usable.append(retriever.name)
        except ModelCallError as error:
            ctx.note(f"{retriever.name}: retrieval failed, its samples were skipped — {error}")
            ctx.log.event(Event.MODEL_FAILED, STAGE, retriever.name, cause=error.cause, message=str(error))
    return usable


def retrieve(ctx: RunContext, retriever: ModelInfo, chunks: list[Chunk], questions: list[Question]) -> None:
    """Rank chunks for every question and store one scored row per question."""
    k = min(ctx.settings.top_k, len(chunks))
    ctx.log.event(Event.STAGE_START, STAGE, retriever.name)
    if retriever.name in BASELINES:
        _store_baseline(ctx, retriever.name, chunks, questions)
        ctx.log.event(Event.STAGE_END, STAGE, retriever.name, questions=len(questions))
        return
    if retriever.name == LEXICAL:
        ranked = _bm25_rank(ctx, chunks, questions, k)
    else:
        ranked = _dense_rank(ctx, retriever, chunks, questions, k)
    for question, chunk_indexes in zip(questions, ranked, strict=True):
        hits = [chunks[i] for i in chunk_indexes]
        docs = dedupe([chunk.doc_id for chunk in hits])
        relevant = question.reference_context_ids
        scores = {"recall_at_k": recall_at_k(docs, relevant, k), "mrr": mrr(docs, relevant), "ndcg_at_k": ndcg_at_k(docs, relevant, k)}
        ctx.store.put_retrieval(ctx.run_id, retriever.name, question.id, [c.id for c in hits], [c.text for c in hits], scores)
    ctx.log.event(Event.STAGE_END, STAGE, retriever.name, questions=len(questions))


def _store_baseline(ctx: RunContext, name: str, chunks: list[Chunk], questions: list[Question]) -> None:
    """oracle: every chunk of the reference documents, in reference order (perfect retrieval); none: nothing (closed book)."""
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    for question in questions:
        if name == ORACLE:
            hits = [chunk for doc_id in question.reference_context_ids for chunk in by_doc[doc_id]]
            scores = dict.fromkeys(RETRIEVAL_METRICS, 1.0)
        else:
            hits, scores = [], dict.fromkeys(RETRIEVAL_METRICS)  # no retrieval happened: empty, never 0
        ctx.store.put_retrieval(ctx.run_id, name, question.id, [c.id for c in hits], [c.text for c in hits], scores)


def _bm25_rank(ctx: RunContext, chunks: list[Chunk], questions: list[Question], k: int) -> list[list[int]]:
    import bm25s

    ctx.log.event(Event.MODEL_LOAD, STAGE, LEXICAL, load_s=0.0, note="in-process lexical index")
    index = bm25s.BM25()
    tokens = {"stopwords": "en", "token_pattern": LEXICAL_TOKEN, "show_progress": False}
    index.index(bm25s.tokenize([c.text for c in chunks], **tokens), show_progress=False)
    found, _ = index.retrieve(bm25s.tokenize([q.question for q in questions], **tokens), k=k, show_progress=False)
    ctx.log.event(Event.MODEL_UNLOAD, STAGE, LEXICAL)
    return found.tolist()


def _dense_rank(ctx: RunContext, retriever: ModelInfo, chunks: list[Chunk], questions: list[Question], k: int) -> list[list[int]]:
    vectors = _embeddings(ctx, retriever, texts_to_embed(chunks, questions))
    corpus, queries = vectors[: len(chunks)], vectors[len(chunks) :]
    similarity = queries @ corpus.T  # vectors are L2-normalised: dot product = cosine
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1).tolist()


def text_hash(text: str) -> str:
    """The embedding cache's key for a text (with the model digest)."""
    return hashlib.sha256(text.encode()).hexdigest()


def texts_to_embed(chunks: list[Chunk], questions: list[Question]) -> list[str]:
    """What a dense retriever embeds: every chunk, then every question."""
    return [c.text for c in chunks] + [q.question for q in questions]


def missing_texts(ctx: RunContext, retriever: ModelInfo, chunks: list[Chunk], questions: list[Question]) -> dict[str, str]:
    """text hash -> text, for what this retriever's cache does not hold yet (everything under --fresh)."""
    by_hash = {text_hash(text): text for text in texts_to_embed(chunks, questions)}
    cached = {} if ctx.settings.fresh else ctx.store.cached_embeddings(retriever.digest, list(by_hash))
    return {h: text for h, text in by_hash.items() if h not in cached}


def embed_in_batches(resident, backend, log, stage: str, texts: dict[str, str], batch_size: int, keep, should_stop=lambda: False) -> None:
    """Embed `texts` (hash -> text) with a resident model, handing each batch to keep(hashes, vectors, seconds) as it is done.

    Under memory pressure the batch is halved once for the stage (other models unloaded); out of
    memory mid-call, it is halved and the same texts are tried again, down to 1, in the same process.
    """
    pending, halved = list(texts), False
    while pending and not should_stop():
        raise_if_signalled()
        if not halved:  # once per stage: a smaller batch frees activations, not the weights
            smaller = relieve_pressure(backend, log, stage, resident.info.name, batch_size)
            halved, batch_size = smaller != batch_size, smaller
        batch = pending[:batch_size]
        try:
            batch_vectors, seconds = resident.call("embed", [texts[h] for h in batch])
        except ModelCallError as error:
            if error.cause != "out_of_memory" or batch_size == 1:
                raise
            smaller = max(1, batch_size // 2)  # activations scale with the batch
            log.event(Event.OUT_OF_MEMORY, stage, resident.info.name, step=f"batch {batch_size} → {smaller}", message=str(error))
            batch_size = smaller
            continue
        keep(batch, batch_vectors, seconds)
        pending = pending[len(batch) :]


def _embeddings(ctx: RunContext, retriever: ModelInfo, texts: list[str]) -> np.ndarray:
    """Vectors for `texts`, from the cache where possible; the model is loaded only for the rest."""
    hashes = [text_hash(text) for text in texts]
    vectors = {} if ctx.settings.fresh else ctx.store.cached_embeddings(retriever.digest, hashes)
    missing = {h: text for h, text in zip(hashes, texts, strict=True) if h not in vectors}
    if missing:

        def keep(batch: list[str], batch_vectors: np.ndarray, seconds: float) -> None:
            ctx.model_call_s += seconds
            ctx.store.put_embeddings(retriever.digest, list(zip(batch, batch_vectors, strict=True)))
            vectors.update(zip(batch, batch_vectors, strict=True))
            progress.advance(len(batch))

        with (
            resident_model(ctx.backend, retriever, STAGE, ctx.log) as resident,
            bar(f"embed {retriever.name}", len(missing), ctx.quiet) as progress,
        ):
            embed_in_batches(resident, ctx.backend, ctx.log, STAGE, missing, ctx.platform.embed_batch_size, keep)
    else:
        ctx.log.event(Event.MODEL_SKIPPED, STAGE, retriever.name, reason="all embeddings cached")
    return np.stack([vectors[h] for h in hashes])
