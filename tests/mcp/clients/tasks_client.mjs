// A client of the official TypeScript SDK that speaks MCP Tasks (protocol 2025-11-25) to
// `agent-sandbox serve` over stdio: it creates a task, polls it, gets its result, cancels
// another, and prints what it saw as one JSON document for tests/mcp/test_tasks.py to check.
// usage: node tasks_client.mjs PYTHON NODE_MODULES (where the SDK is installed: make mcp-clients)
import { pathToFileURL } from "node:url";

const [python, nodeModules] = process.argv.slice(2);
const sdk = (path) => import(pathToFileURL(`${nodeModules}/@modelcontextprotocol/sdk/dist/esm/${path}`).href);
const { Client } = await sdk("client/index.js");
const { StdioClientTransport } = await sdk("client/stdio.js");
const { CallToolResultSchema, CreateTaskResultSchema } = await sdk("types.js");
const seen = {};
const client = new Client({ name: "ts-tasks-client", version: "1.0.0" }, { capabilities: {} });
await client.connect(
  new StdioClientTransport({ command: python, args: ["-m", "agent_sandbox", "serve"], stderr: "ignore", env: process.env }),
);
seen.capabilities = client.getServerCapabilities();
seen.tools = (await client.listTools()).tools.map((tool) => ({ name: tool.name, execution: tool.execution ?? null }));

const ticking = "import time\nfor i in range(4):\n    print('tick', i, flush=True)\n    time.sleep(1)\n";
const call = (code) => ({ method: "tools/call", params: { name: "run_python", arguments: { code }, task: { ttl: 60000 } } });
const started = Date.now();
seen.created = await client.request(call(ticking), CreateTaskResultSchema);
seen.created_ms = Date.now() - started;
const id = seen.created.task.taskId;
seen.polled = [];
for (;;) {
  const task = await client.experimental.tasks.getTask(id);
  seen.polled.push({ status: task.status, statusMessage: task.statusMessage });
  if (task.status !== "working") break;
  await new Promise((resolve) => setTimeout(resolve, 500));
}
seen.listed = (await client.experimental.tasks.listTasks()).tasks.map((task) => task.taskId);
seen.result = await client.experimental.tasks.getTaskResult(id, CallToolResultSchema);

const doomed = await client.request(call("import time; time.sleep(60)"), CreateTaskResultSchema);
seen.cancelled = await client.experimental.tasks.cancelTask(doomed.task.taskId);
try {
  await client.experimental.tasks.cancelTask(doomed.task.taskId);
} catch (error) {
  seen.cancelled_again = { code: error.code, message: error.message };
}
try {
  await client.experimental.tasks.getTask("A".repeat(22));
} catch (error) {
  seen.unknown = { code: error.code, message: error.message };
}
await client.close();
console.log(JSON.stringify(seen));
