"""A LangChain/LangGraph agent that answers a data question by running Python in agent-sandbox via MCP.

    make client-venvs                                                    # once: .tools/venv-langchain
    .tools/venv-langchain/bin/python examples/agents/langchain_agent.py # offline: a scripted model
    AGENT_MODEL=openai:gpt-4o OPENAI_API_KEY=... \
        .tools/venv-langchain/bin/python examples/agents/langchain_agent.py

`langchain-mcp-adapters` requires the 1.x `mcp` SDK and the server is built on 2.x, so this example
has a virtual environment of its own (examples/agents/requirements-langchain.txt) and starts the
server from the project's `.venv` (`make venv`). Offline (no model configured) a scripted chat model
stands in for the LLM: it calls `run_python`, then answers with what the sandbox returned.
`--model` or `AGENT_MODEL` takes a LangChain `init_chat_model` name (`openai:...`,
`anthropic:...`, ...); its provider's package (e.g. `langchain-openai`) must be installed in that
environment, and its key be in the provider's usual environment variable.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain.chat_models import init_chat_model
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import load_mcp_tools
from sales_question import CODE, INSTRUCTIONS, QUESTION, answer, model_name, summary

# The server comes from the project's own environment: this one has the 1.x `mcp` SDK, no agent_sandbox.
SERVER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "agent-sandbox"


class ScriptedModel(BaseChatModel):
    """Turn 1: call run_python. Turn 2: answer from the tool's structured result, never from CODE."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self  # its script names the tool itself

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        returns = [message for message in messages if isinstance(message, ToolMessage)]
        if not returns:
            call = {"name": "run_python", "args": {"code": CODE}, "id": "call-1", "type": "tool_call"}
            reply = AIMessage(content="", tool_calls=[call])
        else:  # langchain-mcp-adapters puts the structured result in the message's artifact
            result = (returns[-1].artifact or {}).get("structured_content", returns[-1].content)
            reply = AIMessage(content=answer(result) if isinstance(result, dict) else repr(result))
        return ChatResult(generations=[ChatGeneration(message=reply)])


def choose_model(name: str | None) -> BaseChatModel:
    if not name:
        return ScriptedModel()
    try:
        # An unknown name, or a missing provider package or key, fails here: before any request.
        return init_chat_model(name)
    except Exception as error:
        sys.exit(f"cannot use model {name!r}: {str(error).splitlines()[0]}")


async def main() -> None:
    model = choose_model(model_name(__doc__ or "", "openai:gpt-4o"))
    if not SERVER.exists():
        sys.exit(f"no server at {SERVER}: run `make venv` in the project first")

    client = MultiServerMCPClient(
        {"agent-sandbox": {"transport": "stdio", "command": str(SERVER), "args": ["serve"]}}
    )
    # One session for the whole run: one server (and its warm containers), stopped when the agent is done.
    async with client.session("agent-sandbox") as session:
        agent = create_agent(model, await load_mcp_tools(session), system_prompt=INSTRUCTIONS)
        result = await agent.ainvoke({"messages": [{"role": "user", "content": QUESTION}]})

    print("tool calls:")
    for message in result["messages"]:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                code = str(call["args"].get("code", ""))
                print(f"  -> {call['name']}, code:\n{textwrap.indent(code, '     | ')}")
        elif isinstance(message, ToolMessage):
            structured = (message.artifact or {}).get("structured_content", message.content)
            print(f"  <- {message.name}: {summary(structured)}")
    print("answer:", result["messages"][-1].text)


if __name__ == "__main__":
    asyncio.run(main())
