// A client of the official TypeScript SDK against agent-sandbox: it lists the tools, calls run_python
// and run_project, and prints what it saw as one JSON document for tests/mcp/test_clients.py to check.
// Either generation of the SDK (both installed in .tools/mcp-clients by `make mcp-clients`, run with
// the Node 22 it uses):
//   sdk          @modelcontextprotocol/sdk 1.x
//   client       @modelcontextprotocol/client 2.x, default negotiation (legacy: `initialize`)
//   client-auto  @modelcontextprotocol/client 2.x, versionNegotiation "auto" (`server/discover` first)
// usage: node matrix_client.mjs GENERATION stdio COMMAND [ARG...]
//        node matrix_client.mjs GENERATION http URL
import { readFileSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const [generation, transportName, ...target] = process.argv.slice(2);
const nodeModules = fileURLToPath(new URL("../../../.tools/mcp-clients/node_modules", import.meta.url));
const load = (path) => import(pathToFileURL(`${nodeModules}/@modelcontextprotocol/${path}`).href);
const packageName = generation === "sdk" ? "sdk" : "client";
const { version } = JSON.parse(readFileSync(`${nodeModules}/@modelcontextprotocol/${packageName}/package.json`));

let Client, StdioClientTransport, StreamableHTTPClientTransport;
if (generation === "sdk") {
  ({ Client } = await load("sdk/dist/esm/client/index.js"));
  ({ StdioClientTransport } = await load("sdk/dist/esm/client/stdio.js"));
  ({ StreamableHTTPClientTransport } = await load("sdk/dist/esm/client/streamableHttp.js"));
} else {
  ({ Client, StreamableHTTPClientTransport } = await load("client/dist/index.mjs"));
  ({ StdioClientTransport } = await load("client/dist/stdio.mjs"));
}

const options = generation === "client-auto" ? { versionNegotiation: { mode: "auto" } } : {};
const client = new Client({ name: "ts-matrix-client", version: "1.0.0" }, { capabilities: {}, ...options });
const transport =
  transportName === "stdio"
    ? new StdioClientTransport({ command: target[0], args: target.slice(1), stderr: "ignore", env: process.env })
    : new StreamableHTTPClientTransport(new URL(target[0]));
// The 1.x Client keeps no negotiated version of its own: it hands it to the transport, as here.
let negotiated;
const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
transport.setProtocolVersion = (version) => {
  negotiated = version;
  setProtocolVersion?.(version);
};
await client.connect(transport);

const seen = (result) => ({
  is_error: result.isError ?? false,
  text: result.content.filter((block) => block.type === "text").map((block) => block.text).join("\n"),
  structured: result.structuredContent ?? null,
});
// The two calls every client of the matrix makes.
const calls = JSON.parse(readFileSync(new URL("calls.json", import.meta.url)));
const tools = (await client.listTools()).tools.map((tool) => tool.name);
const snippet = seen(await client.callTool({ name: "run_python", arguments: calls.run_python }));
const run = seen(await client.callTool({ name: "run_project", arguments: calls.run_project }));
const protocolVersion = client.getNegotiatedProtocolVersion?.() ?? negotiated ?? null;
await client.close();
console.log(
  JSON.stringify({
    sdk: `@modelcontextprotocol/${packageName} ${version}`,
    transport: transportName,
    protocol_version: protocolVersion,
    tools,
    run_python: snippet,
    run_project: run,
  }),
);
