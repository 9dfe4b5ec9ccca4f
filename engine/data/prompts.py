"""Turning a question into the prompt the policy completes, and into its token ids.

Two formats (`data.prompt_format`):
- plain: `PLAIN_TEMPLATE`, for base models and the embedded tiny-math model; the completion is expected
  to start right after "Answer:" and end with `#### <number>` (the GSM8K answer format).
- chat: the tokenizer's own chat template with one user turn (the question plus `data.instruction`, by default
  `CHAT_INSTRUCTION`, which asks for the `####` format the reward reads), an optional system turn
  (`data.system_prompt`), and the generation prompt. A row may carry ready `messages` instead of a question
  string (a list of {"role", "content"} ending in a user turn): they are rendered as written, the instruction
  is not appended, and the system prompt is put first unless they open with a system turn of their own.

Use `encode_prompt` wherever a rendered prompt is tokenised (rollout, eval), so the ids always agree.
"""
from __future__ import annotations

from typing import Any, Literal

from engine.config import CHAT_INSTRUCTION

PromptFormat = Literal["plain", "chat"]
Messages = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": text}, ...]

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
__all__ = ["CHAT_INSTRUCTION", "PLAIN_TEMPLATE", "Messages", "PromptFormat", "encode_prompt", "render_prompt"]


def render_prompt(question: str | Messages, tokenizer: Any, prompt_format: PromptFormat, system_prompt: str = "",
                  instruction: str = CHAT_INSTRUCTION) -> str:
    """The prompt text for `question` (a string, or ready chat messages). `tokenizer` is only used (and may
    be None) for the chat format."""
    if prompt_format == "plain":
        if system_prompt:
            # Silently dropping it would run an experiment other than the one configured.
            raise ValueError("data.system_prompt is only used with data.prompt_format=chat; "
                             "clear it or switch the format")
        if not isinstance(question, str):
            raise ValueError("a row with chat messages needs data.prompt_format=chat (the plain format renders "
                             "a question string)")
        return PLAIN_TEMPLATE.format(question=question)
    if prompt_format == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"data.prompt_format=chat, but the tokenizer ({type(tokenizer).__name__}) has no chat "
                             f"template; use data.prompt_format=plain or a model that ships one")
        return tokenizer.apply_chat_template(chat_messages(question, system_prompt, instruction), tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"data.prompt_format: got {prompt_format!r}; allowed: plain, chat")


def chat_messages(question: str | Messages, system_prompt: str, instruction: str) -> Messages:
    """The turns the chat template renders: [system], user (question + instruction); or ready messages with
    the system prompt first when they have no system turn."""
    if isinstance(question, str):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return messages + [{"role": "user", "content": question + instruction}]
    if system_prompt and question[0]["role"] == "system":
        raise ValueError("data.system_prompt is set, but the row's messages open with a system turn of their "
                         "own; clear data.system_prompt or drop that turn")
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + list(question)


def encode_prompt(text: str, tokenizer: Any, prompt_format: PromptFormat) -> list[int]:
    """Token ids of a rendered prompt.

    A chat template already writes the special tokens it wants (BOS included), so none are added; a plain
    prompt gets the tokenizer's usual ones (e.g. Llama's BOS; none for Qwen), as when the model was trained.
    """
    return list(tokenizer.encode(text, add_special_tokens=prompt_format == "plain"))
