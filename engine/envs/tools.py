"""A set of tools as an environment: each assistant turn's tool calls are executed and their results are the
observation; a turn without a tool call ends the episode (it is the final answer, scored by the recipe's
reward functions).

Each call runs on a thread of a shared pool and is waited for at most `EnvLimits.call_timeout_s`; past that it
is a failed call ("timed out") and the episode goes on. A thread cannot be killed, so a tool that can hang must
bound itself (the sandbox kills its own process group at its time limit); the pool's threads only absorb the
wait. A tool raising, an unknown tool name or a malformed call is also a failed call whose message goes back
to the policy, so it can learn the format.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from engine.envs.base import EnvLimits, EpisodeEnd, Observation, Step
from engine.envs.toolcalls import ToolCall, ToolCallError, ToolCallParser, parse_hermes

_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cadence-tool")


@dataclass(frozen=True, slots=True)
class Tool:
    """`fn(**arguments) -> str`. `parameters` is the JSON schema the chat template shows the model."""

    name: str
    fn: Callable[..., str]
    description: str = ""
    parameters: dict = field(default_factory=dict)

    def schema(self) -> dict:
        """The OpenAI-style function description chat templates accept as `tools=[...]`."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


class ToolEnvironment:
    """The `Environment` of one trajectory that may call `tools`."""

    def __init__(self, tools: list[Tool], limits: EnvLimits = EnvLimits(), parser: ToolCallParser = parse_hermes):
        self.tools = {tool.name: tool for tool in tools}
        self.limits = limits
        self.parser = parser

    def step(self, turn: str) -> Step:
        calls = self.parser(turn)
        if not calls:
            return EpisodeEnd()
        results = [self._run(call) for call in calls]
        errors = sum(not ok for ok, _ in results)
        text = "\n".join(message for _, message in results)
        return Observation(text=text, tool_calls=len(calls), tool_errors=errors)

    def _run(self, call: ToolCall | ToolCallError) -> tuple[bool, str]:
        if isinstance(call, ToolCallError):
            return False, f"error: {call.message}"
        tool = self.tools.get(call.name)
        if tool is None:
            return False, f"error: unknown tool {call.name!r}; available: {', '.join(sorted(self.tools))}"
        future = _POOL.submit(tool.fn, **call.arguments)
        try:
            return True, str(future.result(timeout=self.limits.call_timeout_s))
        except FutureTimeout:
            return False, f"error: {call.name} timed out after {self.limits.call_timeout_s:g} s"
        except Exception as exc:  # the tool's own failure is the policy's observation, not the run's
            return False, f"error: {type(exc).__name__}: {exc}"


def calculator_tool() -> Tool:
    from engine.envs.calculator import calculate

    return Tool(
        name="calculator",
        fn=lambda expression: calculate(expression),
        description="Evaluate an arithmetic expression exactly (numbers, + - * / // % ** and parentheses).",
        parameters={"type": "object", "properties": {"expression": {"type": "string"}},
                    "required": ["expression"]},
    )


def render_call(name: str, **arguments) -> str:
    """A tool call in the Hermes format, e.g. for demonstrations: the exact text `parse_hermes` reads back."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"
