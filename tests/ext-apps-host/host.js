// The test host: the official MCP Apps host bridge (AppBridge) and the official MCP client, as a chat
// client wires them, with a record of what passed through for the test to read (window.__host).
//
// The MCP client reaches runapi-mcp through RelayTransport: every JSON-RPC message goes to the test
// (window.__mcpToServer, a Playwright binding) which hands it to the server running in-process, and the
// server's messages come back through window.__mcpFromServer. Everything between the client and the view
// is the packages' own code: AppBridge answers ui/initialize, forwards the view's tools/call to the
// client (when the host offers server tools), and carries tool-input/tool-result to the view.
import { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";
import { Client } from "@modelcontextprotocol/client";

const APPS_EXTENSION = "io.modelcontextprotocol/ui";
const APP_MIME_TYPE = "text/html;profile=mcp-app";

class RelayTransport {
  async start() {
    window.__mcpFromServer = (message) => { this.onmessage?.(message); };
  }

  async send(message) {
    await window.__mcpToServer(message);
  }

  async close() {
    window.__mcpFromServer = () => {};
    this.onclose?.();
  }
}

const record = {
  calls: [],          // every tools/call the view made through the bridge, with its outcome
  modelContext: [],   // ui/update-model-context requests, newest last
  openedLinks: [],
  logs: [],
  errors: [],
  deny: {},           // tool name -> message: the host refuses that tool (as a user would)
  initialized: false,
  appInfo: null,
  hostCapabilities: null,
};
window.__host = record;

function withCsp(html, csp) {
  if (!csp) return html;
  return html.replace("<head>", `<head>\n<meta http-equiv="Content-Security-Policy" content="${csp}">`);
}

// What AppBridge gets as its client: the real one, with the host's own limit on each forwarded request
// (the official client's default is 60 s; a test scales it down) and a record of each tools/call.
function hostClient(client, requestTimeoutMs) {
  return {
    getServerCapabilities: () => client.getServerCapabilities(),
    setNotificationHandler: (...args) => client.setNotificationHandler(...args),
    request: async (request, options) => {
      if (request.method !== "tools/call") return client.request(request, options);
      const call = {
        name: request.params.name,
        arguments: request.params.arguments,
        startedMs: performance.now(),
        endedMs: null,
        outcome: "running",
        error: null,
        status: null,
      };
      record.calls.push(call);
      try {
        const denied = record.deny[call.name];
        if (denied) throw new Error(denied);
        const limited = requestTimeoutMs ? { ...options, timeout: requestTimeoutMs } : options;
        const result = await client.request(request, limited);
        call.outcome = result.isError ? "tool-error" : "ok";
        call.status = result.structuredContent?.status ?? null;
        return result;
      } catch (error) {
        call.outcome = "error";
        call.error = String(error?.message ?? error);
        throw error;
      } finally {
        call.endedMs = performance.now();
      }
    },
  };
}

window.startHost = async (setup) => {
  const client = new Client(
    { name: "ext-apps-test-host", version: "1.0.0" },
    { capabilities: { extensions: { [APPS_EXTENSION]: { mimeTypes: [APP_MIME_TYPE] } } } },
  );
  await client.connect(new RelayTransport());
  window.__client = client;

  // As a host does when the model calls a tool: find the tool's view, read it, make the call.
  const { tools } = await client.listTools();
  const tool = tools.find((t) => t.name === setup.tool);
  const uri = tool?._meta?.ui?.resourceUri;
  if (!uri) throw new Error(`${setup.tool} links no view`);
  const read = await client.readResource({ uri });
  const view = read.contents[0];
  if (view.mimeType !== APP_MIME_TYPE) throw new Error(`${uri} is ${view.mimeType}`);
  const result = setup.result ?? (await client.callTool({ name: setup.tool, arguments: setup.arguments }));
  record.toolResult = result;

  const capabilities = setup.hostCapabilities ?? {
    openLinks: {},
    serverTools: {},
    logging: {},
    updateModelContext: { text: {}, structuredContent: {} },
  };
  record.hostCapabilities = capabilities;
  const bridge = new AppBridge(
    setup.forwardTools ? hostClient(client, setup.requestTimeoutMs) : null,
    { name: "ext-apps-test-host", version: "1.0.0" },
    capabilities,
    {
      hostContext: {
        toolInfo: { id: 1, tool },
        theme: "light",
        displayMode: "inline",
        availableDisplayModes: ["inline"],
        containerDimensions: { maxHeight: 1600 },
        styles: { variables: { "--color-background-primary": "#fbfbfd" } },
      },
    },
  );
  window.__bridge = bridge;
  bridge.onupdatemodelcontext = async (params) => {
    record.modelContext.push(params);
    return {};
  };
  bridge.onopenlink = async ({ url }) => {
    record.openedLinks.push(url);
    return {};
  };
  bridge.addEventListener("loggingmessage", (params) => record.logs.push(params));
  bridge.onerror = (error) => record.errors.push(String(error?.message ?? error));

  const frame = document.getElementById("view");
  document.getElementById("who").textContent = `Assistant used ${setup.tool}`;
  bridge.addEventListener("sizechange", ({ height }) => {
    if (typeof height === "number") frame.style.height = `${Math.min(1600, Math.max(160, height))}px`;
  });
  const initialized = new Promise((resolve) => {
    bridge.addEventListener("initialized", async () => {
      record.initialized = true;
      record.appInfo = bridge.getAppVersion() ?? null;
      await bridge.sendToolInput({ arguments: setup.arguments ?? {} });
      await bridge.sendToolResult(result);
      resolve();
    });
  });
  await bridge.connect(new PostMessageTransport(frame.contentWindow, frame.contentWindow));
  frame.srcdoc = withCsp(view.text, setup.csp);
  await initialized;
  return { uri, structuredContent: result.structuredContent ?? null };
};
