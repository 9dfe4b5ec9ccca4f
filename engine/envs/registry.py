"""The recipe's `env:` section to an `EnvironmentFactory`: built-in tool sets by name, or any factory by import path.

    env.name: calculator          -> ToolEnvironment([calculator])   (exact arithmetic)
    env.name: python              -> ToolEnvironment([python])       (the sandbox, engine/envs/sandbox.py)
    env.name: my.module:make_env  -> my.module.make_env, called as make_env(prompt_text, reference) per trajectory

The factory is resolved where the rollout engine lives (the trainer process, or each split rollout worker,
which receives the config and resolves it again), so a factory need not be picklable.
"""
from __future__ import annotations

import importlib
from functools import partial

from engine.envs.base import EnvironmentFactory, EnvLimits
from engine.envs.toolcalls import get_parser
from engine.envs.tools import Tool, ToolEnvironment, calculator_tool


def _python_tool(limits: EnvLimits) -> Tool:
    from engine.envs.sandbox import SandboxLimits, python_tool

    # the sandbox's own wall clock ends the script before the call's timeout would give up on it
    wall_s = max(0.1, limits.call_timeout_s - 0.5)
    return python_tool(SandboxLimits(wall_s=wall_s, cpu_s=max(1, int(wall_s))))


def _tool_environment(tools: list[Tool], limits: EnvLimits, parser, prompt_text: str, reference: str):
    return ToolEnvironment(tools, limits, parser)


def environment_factory(env) -> EnvironmentFactory:
    """`env` is the EnvConfig. Unknown tool parsers and import paths fail here, at build time, naming the key."""
    limits = env.limits()
    parser = get_parser(env.tool_parser)
    if env.name == "calculator":
        return partial(_tool_environment, [calculator_tool()], limits, parser)
    if env.name == "python":
        return partial(_tool_environment, [_python_tool(limits)], limits, parser)
    return _import(env.name)


def _import(path: str) -> EnvironmentFactory:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"env.name '{path}': cannot import it ({type(exc).__name__}: {exc}); expected "
                         "module:function returning an Environment for (prompt_text, reference)") from exc
    if not callable(factory):
        raise ValueError(f"env.name '{path}': {type(factory).__name__} object is not callable")
    return factory
