// node-ws: a benchmark peer written for this repository, a minimal chat server on Node's `ws`.
// The contract is shequ-chat's /ws for the load generator: an HS256 `?token=` (verified with
// SECRET; `sub` is the user), one connection per user (a new one evicts the old), and every
// {"type":"chat","content":C} a client sends goes to everyone, the sender included, in
// shequ-chat's chat envelope {"type":"chat","id":N,"user_id":U,"username":U,"content":C,"ts":MS},
// serialized once per broadcast. No validation, rate limit or history. For benchmarks only.
// Usage: SECRET=... node server.mjs PORT
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { WebSocketServer } from "ws";

const secret = process.env.SECRET || "";
const port = Number(process.argv[2] || 8080);

function userOf(token) {
  const [h, p, s] = (token || "").split(".");
  if (!s) return null;
  const mac = createHmac("sha256", secret).update(`${h}.${p}`).digest();
  const sig = Buffer.from(s, "base64url");
  if (sig.length !== mac.length || !timingSafeEqual(sig, mac)) return null;
  const claims = JSON.parse(Buffer.from(p, "base64url").toString());
  if (claims.exp && Date.now() / 1000 > claims.exp) return null;
  return claims.sub == null ? null : String(claims.sub);
}

const users = new Map();
let lastId = 0;

// What a client sent ({"type":"chat","content":C}), in the frame every receiver gets: built once,
// sent to all.
function envelope(user, text) {
  let content = "";
  try { content = String(JSON.parse(text).content ?? ""); } catch { /* not JSON: empty */ }
  const who = JSON.stringify(user);
  lastId += 1;
  return `{"type":"chat","id":${lastId},"user_id":${who},"username":${who},` +
    `"content":${JSON.stringify(content)},"ts":${Date.now()}}`;
}

const server = createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true });
server.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://x");
  const user = url.pathname === "/ws" ? userOf(url.searchParams.get("token")) : null;
  if (!user) {
    socket.end("HTTP/1.1 401 Unauthorized\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    users.get(user)?.close(4001);
    users.set(user, ws);
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      const frame = envelope(user, data.toString());
      for (const client of wss.clients) client.send(frame);
    });
    ws.on("close", () => { if (users.get(user) === ws) users.delete(user); });
  });
});
server.listen(port, "127.0.0.1");
