"""Environments for multi-turn rollouts: the policy acts over several turns and is answered between them.

    prompt ─► assistant turn ─► env.step(turn) ─► Observation (tool result, env message) ─► assistant turn ─► ...
                                              └─► EpisodeEnd (reward parts)

`base.py` holds the contract (`Environment`, `Observation`, `EpisodeEnd`, `EnvLimits`), `toolcalls.py` reads
tool calls out of an assistant turn in the chat template's format (Hermes/Qwen `<tool_call>{json}</tool_call>`
by default), `tools.py` turns a set of tools into an environment, `calculator.py` and `sandbox.py` are the
built-in tools (exact arithmetic; Python in a limited subprocess, also usable as a unit-test reward).
This package imports no torch: environments run beside generation, on the controller's CPU threads.
"""
from engine.envs.base import EnvLimits, Environment, EpisodeEnd, Observation, Step
from engine.envs.calculator import calculate
from engine.envs.toolcalls import ToolCall, ToolCallError, parse_hermes
from engine.envs.tools import Tool, ToolEnvironment

__all__ = [
    "EnvLimits",
    "Environment",
    "EpisodeEnd",
    "Observation",
    "Step",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolEnvironment",
    "calculate",
    "parse_hermes",
]
