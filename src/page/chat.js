// The reference client: connects with a token, shows messages as text (never as HTML),
// reconnects with backoff and `since` so nothing is missed, and stops when the tab is replaced.
// When a connection fails before `welcome`, it asks the server why (a plain GET of the same URL
// answers with the status the upgrade got) and says so in words; a bad token stops the retries.
// After the idle timeout (4002) it waits for the user to come back before it reconnects.
"use strict";

const PING_INTERVAL_MS = 20000;      // app-level ping; the server's pong timeout is 60 s
const PONG_TIMEOUT_MS = 10000;       // no pong by then: the connection is dead, reconnect
const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 30000;
const RELOAD_CONTEXT = 50;           // after a reload, also show this many earlier messages

const $ = (id) => document.getElementById(id);
const tokenField = $("token");
const input = $("input");
const sendButton = $("send");
const list = $("messages");

let ws = null;
let backoff = BACKOFF_START_MS;
let retryTimer = null;
let pingTimer = null;
let pongTimer = null;
// The last message id shown on this page. It is also kept across reloads of the tab: a reloaded
// page resumes a little before it, so it misses nothing and still shows some context.
let lastId = 0;
const storedId = Number(sessionStorage.getItem("shequ.lastId") || 0);
const reloadSince = storedId > 0 ? Math.max(0, storedId - RELOAD_CONTEXT) : null;

function setStatus(text, warn = false) {
  $("status").textContent = text;
  $("status").className = warn ? "warn" : "";
}

function setConnected(on) {
  input.disabled = !on;
  sendButton.disabled = !on;
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  list.append(li);
}

function show(msg) {
  if (msg.id <= lastId) return; // already shown
  lastId = msg.id;
  sessionStorage.setItem("shequ.lastId", String(lastId));
  const li = document.createElement("li");
  li.dataset.id = msg.id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = msg.username;
  const text = document.createElement("span");
  text.className = "content";
  text.textContent = msg.content; // text, never HTML
  const when = document.createElement("time");
  when.className = "when";
  when.textContent = new Date(msg.ts).toLocaleTimeString();
  li.append(who, text, when);
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

// What the page says about a refused connection, by HTTP status; `retry` keeps trying.
function refusal(status, reason) {
  switch (status) {
    case 401: return { text: `Cannot connect: ${reason}. Paste a new token and connect.`, retry: false };
    case 403: return { text: "Cannot connect: not allowed from this origin (the server's allowed_origins).", retry: false };
    case 503: return { text: `The server is busy (${reason}).`, retry: true };
    default: return null;
  }
}

// Asks the server why `url` could not be opened as a WebSocket: the probe answers with the
// status the upgrade got and a one-line reason. Null when it cannot tell (the server is down).
async function whyRefused(url) {
  try {
    const response = await fetch(url.replace(/^ws/, "http"), { cache: "no-store" });
    return refusal(response.status, (await response.text()).trim());
  } catch {
    return null;
  }
}

const ACTIVITY = ["focus", "keydown", "pointerdown", "visibilitychange"];

// After the idle timeout: reconnect on the next sign of the user (with `since`, as always).
function resumeOnActivity() {
  const resume = () => {
    if (document.visibilityState === "hidden") return;
    ACTIVITY.forEach((e) => window.removeEventListener(e, resume, true));
    notice("Welcome back.");
    connect();
  };
  ACTIVITY.forEach((e) => window.addEventListener(e, resume, true));
}

function stopTimers() {
  clearInterval(pingTimer);
  clearTimeout(pongTimer);
  clearTimeout(retryTimer);
}

function connect() {
  const token = tokenField.value.trim();
  if (!token) {
    setStatus("Paste a token to connect.", true);
    return;
  }
  stopTimers();
  if (ws) ws.close();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // Within this page, resume exactly after the last message shown; after a reload, a bit before.
  const resume = lastId > 0 ? lastId : reloadSince;
  const since = resume !== null ? `&since=${resume}` : "";
  const url = `${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}${since}`;
  const socket = new WebSocket(url);
  ws = socket;
  let welcomed = false;
  setStatus("Connecting…");
  socket.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    switch (msg.type) {
      case "welcome":
        welcomed = true;
        backoff = BACKOFF_START_MS;
        setConnected(true);
        setStatus(`Connected as ${msg.username}.`);
        $("online").textContent = `${msg.online} online`;
        if (msg.recovered === false && lastId > 0) notice("Some messages may be missing.");
        break;
      case "chat":
        show(msg);
        break;
      case "online":
        $("online").textContent = `${msg.count} online`;
        break;
      case "pong":
        clearTimeout(pongTimer);
        break;
      case "error":
        setStatus(`Not sent: ${msg.message}`, true);
        break;
    }
  };
  socket.onopen = () => {
    pingTimer = setInterval(() => {
      socket.send(JSON.stringify({ type: "ping" }));
      clearTimeout(pongTimer);
      pongTimer = setTimeout(() => socket.close(), PONG_TIMEOUT_MS);
    }, PING_INTERVAL_MS);
  };
  socket.onclose = async (event) => {
    if (socket !== ws) return; // an older socket we replaced ourselves
    stopTimers();
    setConnected(false);
    ws = null;
    if (!welcomed) {
      // Refused before `welcome`: the browser does not show us the HTTP status, so ask.
      setStatus("Could not connect; asking the server why…", true);
      const why = await whyRefused(url);
      if (ws) return; // the user connected again meanwhile
      if (why && !why.retry) {
        setStatus(why.text, true);
        return;
      }
      if (why) notice(why.text);
    }
    if (event.code === 4002) {
      setStatus("Paused after a quiet while. Click, type or come back to this tab to resume.");
      resumeOnActivity();
      return;
    }
    if (event.code === 4001) {
      setStatus("Chat opened in another tab. Reload to use it here.", true);
      return;
    }
    if (event.code === 4003) {
      setStatus("Your session expired: paste a new token and connect.", true);
      return;
    }
    // Anything else: try again, later each time, with jitter so clients do not return in step.
    const delay = Math.round(backoff / 2 + Math.random() * backoff / 2);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    setStatus(`Disconnected (${event.code}). Reconnecting in ${Math.ceil(delay / 1000)} s…`, true);
    retryTimer = setTimeout(connect, delay);
  };
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  backoff = BACKOFF_START_MS;
  connect();
});

$("compose").addEventListener("submit", (event) => {
  event.preventDefault();
  const content = input.value;
  if (!content.trim() || !ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify({ type: "chat", content }));
  input.value = "";
});

const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  tokenField.value = fromHash;
  connect();
}
