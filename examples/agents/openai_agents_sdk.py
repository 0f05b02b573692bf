"""An OpenAI Agents SDK agent that answers a data question by running Python in agent-sandbox via MCP (stdio).

    .venv/bin/python examples/agents/openai_agents_sdk.py                    # offline: a scripted model
    AGENT_MODEL=gpt-4o OPENAI_API_KEY=... .venv/bin/python examples/agents/openai_agents_sdk.py

Offline (no model configured) the SDK's own test double, `agents.testing.ScriptedModel`, stands in
for the LLM: it calls `run_python`, then answers with what the sandbox returned; tracing is off, so
nothing leaves the machine. `--model` or `AGENT_MODEL` takes an OpenAI model name (needs
`OPENAI_API_KEY`). Needs the `examples` extra (`make venv` installs it).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import textwrap

import anyio
from agents import Agent, Model, Runner, ToolCallItem, ToolCallOutputItem, set_tracing_disabled
from agents.mcp import MCPServerStdio
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call
from openai.types.responses import ResponseFunctionToolCall

SALES = {"Jan": 4210, "Feb": 3987, "Mar": 4633, "Apr": 5012, "May": 4876, "Jun": 5390,
         "Jul": 6125, "Aug": 5874, "Sep": 5011, "Oct": 4702, "Nov": 5583, "Dec": 5940}  # fmt: skip
QUESTION = (
    f"Monthly sales: {SALES}. Which month had the highest sales, and what is the sample standard "
    "deviation of the monthly sales, to 4 decimals?"
)
INSTRUCTIONS = "Compute every number with the run_python tool; never estimate."
# The scripted model's program. Its last expression comes back as the result's `return_value`.
CODE = f"""import statistics
sales = {SALES!r}
best = max(sales, key=sales.get)
{{"best_month": best, "stdev": f"{{statistics.stdev(sales.values()):.4f}}"}}"""


def answer_from_tool_output(call: ModelCall) -> ModelStep:
    """Turn 2: answer from the run_python output in the model's input, never from CODE."""
    outputs = [item for item in call.input if item.get("type") == "function_call_output"]
    result = json.loads(outputs[-1]["output"])  # the tool's structured result, as JSON text
    if result.get("exit_code") != 0:
        return ModelStep(output=[assistant_message(f"The sandbox run failed: {result!r}")])
    found = ast.literal_eval(result["return_value"])
    answer = f"{found['best_month']} had the highest sales; the sample standard deviation is {found['stdev']}"
    return ModelStep(output=[assistant_message(answer)])


def choose_model(name: str | None) -> Model | str:
    if not name:
        set_tracing_disabled(True)  # else traces are exported to api.openai.com
        first = ModelStep(output=[function_call("run_python", {"code": CODE}, call_id="call_1")])
        return ScriptedModel([first, ModelStep.respond(answer_from_tool_output)])
    if not os.environ.get("OPENAI_API_KEY"):  # checked before any request is made
        sys.exit(f"cannot use model {name!r}: set OPENAI_API_KEY, or unset AGENT_MODEL to run offline")
    return name


def summary(output: object) -> str:
    """A log line for a run_python result."""
    try:
        result = json.loads(str(output))
    except ValueError:
        return repr(output)[:300]
    shown = ("exit_code", "stdout", "stderr", "return_value", "error")
    return ", ".join(f"{key}={result[key]!r}" for key in shown if result.get(key) not in (None, ""))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("AGENT_MODEL"), help="e.g. gpt-4o")
    model = choose_model(parser.parse_args().model)

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
            print(f"  <- {summary(item.output)}")
    print("answer:", result.final_output)


if __name__ == "__main__":
    anyio.run(main)
