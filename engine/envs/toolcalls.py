"""Reading tool calls out of an assistant turn, in the format of the model's chat template.

The default is the Hermes/Qwen format, which Qwen2.5/3, Hermes and SmolLM chat templates render and which
those models are tuned to write:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "1234 * 5678"}}
    </tool_call>

A turn may hold several calls; text around them is the model's reasoning and is ignored here. A parser is a
plain function `turn -> list[ToolCall | ToolCallError]`, selected by name from `PARSERS`, so a template with
another format adds one function. A malformed call is a `ToolCallError` (never an exception): the policy wrote
it, and the environment answers it with an error observation the policy can learn from.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_HERMES_RE = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolCallError:
    message: str  # what was wrong, phrased for the policy to read in the observation


ToolCallParser = Callable[[str], list[ToolCall | ToolCallError]]


def parse_hermes(turn: str) -> list[ToolCall | ToolCallError]:
    """Every `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in `turn`, in order. An unclosed tag at
    the end of the turn (generation stopped inside it) is an error, as is a body that is not such a JSON object."""
    calls: list[ToolCall | ToolCallError] = []
    for match in _HERMES_RE.finditer(turn):
        body, closing = match.group(1).strip(), match.group(2)
        calls.append(_hermes_call(body) if closing else ToolCallError("unclosed <tool_call>"))
    return calls


def _hermes_call(body: str) -> ToolCall | ToolCallError:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCallError(f"tool call is not valid JSON: {exc.msg}")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCallError('tool call must be a JSON object with a string "name"')
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):  # some templates serialise arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCallError('tool call "arguments" is a string that is not JSON')
    if not isinstance(arguments, dict):
        return ToolCallError('tool call "arguments" must be a JSON object')
    return ToolCall(name=obj["name"], arguments=arguments)


PARSERS: dict[str, ToolCallParser] = {"hermes": parse_hermes}


def get_parser(name: str) -> ToolCallParser:
    if name not in PARSERS:
        raise ValueError(f"env.tool_parser '{name}' is unknown; expected one of {sorted(PARSERS)}")
    return PARSERS[name]
