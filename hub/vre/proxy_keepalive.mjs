// Loaded into configurable-http-proxy (`node --import <this file> configurable-http-proxy ...`).
//
// For unix-socket targets (every VRE session and the hub itself listen on unix sockets)
// configurable-http-proxy passes no HTTP agent, so http-proxy sends `Connection: close` and the
// upstream closes the socket as soon as it has answered. Node then sometimes still writes to that
// socket and the proxy answers the browser 503 "write EPIPE" for a request the upstream had
// already carried out (measured: 1-3 % of PATCH/PUT/POST requests with a body under concurrency;
// a renamed notebook whose tab kept its old name). Giving unix-socket targets a keep-alive agent
// (the proxy's own http agents are keep-alive too) removes the close and with it the race.
import http from "node:http";
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";

const bin = pathToFileURL(realpathSync(process.argv[1]));
const { default: ConfigurableProxy } = await import(new URL("../lib/configproxy.js", bin).href);
if (typeof ConfigurableProxy?.prototype?.proxyOptsForTarget !== "function") {
  throw new Error("vre proxy_keepalive: configurable-http-proxy has no proxyOptsForTarget; update this shim");
}
const unixAgent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const proxyOptsForTarget = ConfigurableProxy.prototype.proxyOptsForTarget;
ConfigurableProxy.prototype.proxyOptsForTarget = function (target) {
  const options = proxyOptsForTarget.call(this, target);
  if (options.target && options.target.socketPath) {
    options.agent = unixAgent;
    if (!this.vreKeepAlive) {
      // A client's own "Connection: close" would still be passed on (and race the same way):
      // web requests to unix sockets keep the connection open. Websocket upgrades are not web
      // requests (their event is proxyReqWs) and keep their "Connection: Upgrade".
      this.vreKeepAlive = true;
      this.proxy.on("proxyReq", (proxyReq, req, res, opts) => {
        if (opts && opts.target && opts.target.socketPath) proxyReq.setHeader("connection", "keep-alive");
      });
    }
  }
  return options;
};
