import time

from engine.envs.base import EnvLimits, EpisodeEnd, Observation
from engine.envs.toolcalls import ToolCall, ToolCallError, get_parser, parse_hermes
from engine.envs.tools import Tool, ToolEnvironment, calculator_tool, render_call

import pytest


def test_hermes_call_round_trips():
    text = "Let me compute.\n" + render_call("calculator", expression="12 * 34") + "\n"
    assert parse_hermes(text) == [ToolCall("calculator", {"expression": "12 * 34"})]


def test_hermes_reads_several_calls_and_string_arguments():
    text = ('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call> and '
            '<tool_call>{"name": "b"}</tool_call>')
    assert parse_hermes(text) == [ToolCall("a", {"x": 1}), ToolCall("b", {})]


@pytest.mark.parametrize("text,message", [
    ("<tool_call>{not json}</tool_call>", "not valid JSON"),
    ('<tool_call>["calculator"]</tool_call>', "string \"name\""),
    ('<tool_call>{"name": "c", "arguments": 3}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "c"', "unclosed"),
])
def test_malformed_calls_are_errors_not_exceptions(text, message):
    (call,) = parse_hermes(text)
    assert isinstance(call, ToolCallError) and message in call.message


def test_unknown_parser_names_the_choices():
    with pytest.raises(ValueError, match="hermes"):
        get_parser("mistral")


def test_turn_without_a_call_ends_the_episode():
    env = ToolEnvironment([calculator_tool()])
    assert env.step("The answer is #### 42") == EpisodeEnd()


def test_calculator_call_answers_with_the_value():
    env = ToolEnvironment([calculator_tool()])
    obs = env.step(render_call("calculator", expression="1234 * 5678"))
    assert obs == Observation(text="7006652", tool_calls=1, tool_errors=0)


def test_errors_are_counted_and_explained():
    env = ToolEnvironment([calculator_tool()])
    turn = (render_call("calculator", expression="1 / 0") + render_call("search", query="x")
            + render_call("calculator", wrong="1"))
    obs = env.step(turn)
    assert obs.tool_calls == 3 and obs.tool_errors == 3
    lines = obs.text.splitlines()
    assert "division by zero" in lines[0] and "unknown tool 'search'" in lines[1] and "TypeError" in lines[2]


def test_a_hanging_tool_times_out_and_the_episode_goes_on():
    slow = Tool("slow", lambda: time.sleep(5) or "late")
    env = ToolEnvironment([slow, calculator_tool()], EnvLimits(call_timeout_s=0.2))
    start = time.monotonic()
    obs = env.step(render_call("slow"))
    assert obs.tool_errors == 1 and "timed out" in obs.text and time.monotonic() - start < 2
    assert env.step(render_call("calculator", expression="2+2")).text == "4"


@pytest.mark.parametrize("field,value", [("max_turns", 0), ("max_tokens", 0), ("call_timeout_s", 0.0)])
def test_limits_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        EnvLimits(**{field: value})
