"""An OpenAI Agents SDK agent that answers a data question by running Python in agent-sandbox via MCP (stdio).

    .venv/bin/python examples/agents/openai_agents_sdk.py                    # offline: a scripted model
    AGENT_MODEL=gpt-4o OPENAI_API_KEY=... .venv/bin/python examples/agents/openai_agents_sdk.py

Offline (no model configured) the SDK's own test double, `agents.testing.ScriptedModel`, stands in
for the LLM: it calls `run_python`, then answers with what the sandbox returned; tracing is off, so
nothing leaves the machine. `--model` or `AGENT_MODEL` takes an OpenAI model name (needs
`OPENAI_API_KEY`). Needs the `examples` extra (`make venv` installs it).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import anyio
from agents import Agent, Model, Runner, ToolCallItem, ToolCallOutputItem, set_tracing_disabled
from agents.mcp import MCPServerStdio
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call
from openai.types.responses import ResponseFunctionToolCall
from sales_question import CODE, INSTRUCTIONS, QUESTION, answer, model_name, summary


def answer_from_tool_output(call: ModelCall) -> ModelStep:
    """Turn 2: answer from the run_python output in the model's input, never from CODE."""
    outputs = [item for item in call.input if item.get("type") == "function_call_output"]
    result = json.loads(outputs[-1]["output"])  # the tool's structured result, as JSON text
    return ModelStep(output=[assistant_message(answer(result))])


def choose_model(name: str | None) -> Model | str:
    if not name:
        set_tracing_disabled(True)  # else traces are exported to api.openai.com
        first = ModelStep(output=[function_call("run_python", {"code": CODE}, call_id="call_1")])
        return ScriptedModel([first, ModelStep.respond(answer_from_tool_output)])
    if not os.environ.get("OPENAI_API_KEY"):  # checked before any request is made
        sys.exit(f"cannot use model {name!r}: set OPENAI_API_KEY, or unset AGENT_MODEL to run offline")
    return name


def parsed(output: object) -> object:
    """A tool output as the SDK hands it over: the structured result as JSON text."""
    try:
        return json.loads(str(output))
    except ValueError:
        return output


async def main() -> None:
    model = choose_model(model_name(__doc__ or "", "gpt-4o"))

    # A sandbox run can outlast the SDK's 5 s default; the structured result is plain JSON to read.
    server = MCPServerStdio(
        {"command": sys.executable, "args": ["-m", "agent_sandbox", "serve"]},
        client_session_timeout_seconds=120,
        use_structured_content=True,
    )
    async with server:
        agent = Agent(name="analyst", instructions=INSTRUCTIONS, model=model, mcp_servers=[server])
        result = await Runner.run(agent, QUESTION)

    print("tool calls:")
    for item in result.new_items:
        if isinstance(item, ToolCallItem) and isinstance(item.raw_item, ResponseFunctionToolCall):
            code = str(json.loads(item.raw_item.arguments).get("code", ""))
            print(f"  -> {item.raw_item.name}, code:\n{textwrap.indent(code, '     | ')}")
        elif isinstance(item, ToolCallOutputItem):
            print(f"  <- {summary(parsed(item.output))}")
    print("answer:", result.final_output)


if __name__ == "__main__":
    anyio.run(main)
