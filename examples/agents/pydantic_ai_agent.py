"""A pydantic-ai agent that answers a data question by running Python in agent-sandbox via MCP (stdio).

    .venv/bin/python examples/agents/pydantic_ai_agent.py                    # offline: a scripted model
    AGENT_MODEL=openai:gpt-4o OPENAI_API_KEY=... .venv/bin/python examples/agents/pydantic_ai_agent.py

Offline (no model configured) a `FunctionModel` stands in for the LLM: it calls `run_python`, then
answers with what the sandbox returned. `--model` or `AGENT_MODEL` takes any pydantic-ai model name
(`openai:...`, `anthropic:...`, ...) with that provider's key in its usual environment variable.
Needs the `examples` extra (`make venv` installs it).
"""

from __future__ import annotations

import sys
import textwrap

import anyio
from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from sales_question import CODE, INSTRUCTIONS, QUESTION, answer, model_name, summary


def scripted_llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Turn 1: call run_python. Turn 2: answer from the tool's result, never from CODE."""
    returns = [part for message in messages for part in message.parts if isinstance(part, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[ToolCallPart("run_python", {"code": CODE})])
    result = returns[-1].content  # the structured result, as a dict
    return ModelResponse(parts=[TextPart(answer(result) if isinstance(result, dict) else repr(result))])


def choose_model(name: str | None) -> Model:
    if not name:
        return FunctionModel(scripted_llm)
    try:
        return infer_model(name)  # an unknown name or a missing key fails here, before any request
    except UserError as error:
        sys.exit(f"cannot use model {name!r}: {error}")


async def main() -> None:
    model = choose_model(model_name(__doc__ or "", "openai:gpt-4o"))

    # keep_alive=False: the server, and the containers it keeps warm, stop when the agent is done.
    server = StdioTransport(sys.executable, ["-m", "agent_sandbox", "serve"], keep_alive=False)
    agent = Agent(model, instructions=INSTRUCTIONS, toolsets=[MCPToolset(server)])
    async with agent:
        result = await agent.run(QUESTION)

    print("tool calls:")
    for message in result.all_messages():
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                code = str(part.args_as_dict().get("code", ""))
                print(f"  -> {part.tool_name}, code:\n{textwrap.indent(code, '     | ')}")
            elif isinstance(part, ToolReturnPart):
                print(f"  <- {part.tool_name}: {summary(part.content)}")
    print("answer:", result.output)


if __name__ == "__main__":
    anyio.run(main)
