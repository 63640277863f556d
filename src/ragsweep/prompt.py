"""The one prompt template: numbered context passages, the question, "answer briefly from the context"."""

from __future__ import annotations

from .backends.base import Prompt

INSTRUCTION = (
    "Answer the question briefly, using only the context. Reply with the answer only: a few words, no explanation."
    "\n\nExample:\nQuestion: What is the capital of France?\nAnswer: Paris"  # one shot: tiny base models need it (F1 0.02 -> 0.23)
)


def build_prompt(question: str, contexts: list[str]) -> Prompt:
    passages = "\n\n".join(f"[{n}] {text}" for n, text in enumerate(contexts, start=1))
    user = f"Context:\n{passages}\n\nQuestion: {question}"
    messages = ({"role": "system", "content": INSTRUCTION}, {"role": "user", "content": user})
    # Base models (no chat template) continue text: the same content ending in "Answer:".
    completion = f"{INSTRUCTION}\n\n{user}\nAnswer:"
    return Prompt(messages=messages, completion=completion)
