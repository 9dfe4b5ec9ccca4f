"""Turning a question into the prompt the policy completes, and into its token ids.

Two formats (`data.prompt_format`):
- plain: `PLAIN_TEMPLATE`, for base models and the embedded tiny-math model; the completion is expected
  to start right after "Answer:" and end with `#### <number>` (the GSM8K answer format).
- chat: the tokenizer's own chat template with one user turn (the question plus `CHAT_INSTRUCTION`, which
  asks for the same `####` format the reward reads), an optional system turn, and the generation prompt.

Use `encode_prompt` wherever a rendered prompt is tokenised (rollout, eval), so the ids always agree.
"""
from __future__ import annotations

from typing import Any, Literal

PromptFormat = Literal["plain", "chat"]

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
CHAT_INSTRUCTION = "\n\nSolve the problem step by step. Put the final answer, a number, after '####'."


def render_prompt(question: str, tokenizer: Any, prompt_format: PromptFormat, system_prompt: str = "") -> str:
    """The prompt text for `question`. `tokenizer` is only used (and may be None) for the chat format."""
    if prompt_format == "plain":
        if system_prompt:
            # Silently dropping it would run an experiment other than the one configured.
            raise ValueError("data.system_prompt is only used with data.prompt_format=chat; "
                             "clear it or switch the format")
        return PLAIN_TEMPLATE.format(question=question)
    if prompt_format == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"data.prompt_format=chat, but the tokenizer ({type(tokenizer).__name__}) has no chat "
                             f"template; use data.prompt_format=plain or a model that ships one")
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": question + CHAT_INSTRUCTION})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"data.prompt_format: got {prompt_format!r}; allowed: plain, chat")


def encode_prompt(text: str, tokenizer: Any, prompt_format: PromptFormat) -> list[int]:
    """Token ids of a rendered prompt.

    A chat template already writes the special tokens it wants (BOS included), so none are added; a plain
    prompt gets the tokenizer's usual ones (e.g. Llama's BOS; none for Qwen), as when the model was trained.
    """
    return list(tokenizer.encode(text, add_special_tokens=prompt_format == "plain"))
