"""The one prompt template: numbered context passages, the question, "answer briefly from the context".

With no passages (the closed-book baseline) the prompt has no context section at all and does not
mention one: the model answers from what it knows.
"""

from __future__ import annotations

from .backends.base import Prompt

INSTRUCTION = (
    "Answer the question briefly, using only the context. Reply with the answer only: a few words, no explanation."
    "\n\nExample:\nQuestion: What is the capital of France?\nAnswer: Paris"  # one shot: tiny base models need it (F1 0.02 -> 0.23)
)


CLOSED_BOOK_INSTRUCTION = INSTRUCTION.replace(", using only the context", "")


def build_prompt(question: str, contexts: list[str]) -> Prompt:
    """A RAG prompt over `contexts`; an empty list makes the closed-book prompt."""
    instruction = INSTRUCTION if contexts else CLOSED_BOOK_INSTRUCTION
    passages = "\n\n".join(f"[{n}] {text}" for n, text in enumerate(contexts, start=1))
    user = f"Context:\n{passages}\n\nQuestion: {question}" if contexts else f"Question: {question}"
    messages = ({"role": "system", "content": instruction}, {"role": "user", "content": user})
    # Base models (no chat template) continue text: the same content ending in "Answer:".
    completion = f"{instruction}\n\n{user}\nAnswer:"
    return Prompt(messages=messages, completion=completion)


def longest_prompt_bytes(questions, chunks, documents, top_k: int) -> int:
    """UTF-8 bytes of the longest prompt a run can build: its longest question over the top_k longest passages (chunks, and
    whole reference documents where the oracle baseline hands them over)."""
    texts = sorted((p.text for p in [*chunks, *documents]), key=lambda text: len(text.encode()), reverse=True)
    question = max((q.question for q in questions), key=lambda text: len(text.encode()), default="")
    return len(build_prompt(question, texts[:top_k]).completion.encode())
