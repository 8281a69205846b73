// The reference client: connects with a token, shows messages as text (never as HTML),
// reconnects with backoff and `since` so nothing is missed, and stops when the tab is replaced.
// When a connection fails before `welcome`, it asks the server why (a plain GET of the same URL
// answers with the status the upgrade got) and says so in words; a bad token stops the retries.
// After the idle timeout (4002) it waits for the user to come back before it reconnects.
// On a server with channels (`welcome` says `"protocol":2`) it lists the channels, counts unread
// messages in the others, switches without reconnecting, keeps the shown channel in the URL
// (`#channel=`), and after a reconnect joins again each channel it was in, from the last id.
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

// Channels (protocol 2). Ids are one sequence over all channels, so the highest id shown is
// where every channel resumes; each channel also keeps its own last id, since a channel joined
// later replays ids below another channel's.
let protocol = 1;
let myId = null;
let current = new URLSearchParams(location.hash.slice(1)).get("channel");
const joined = new Set();              // channels this connection is in
const pending = new Set();             // joins sent and not answered yet
const lastIn = new Map();              // channel -> last id shown in it ("" without channels)
const unread = new Map();
const onlineIn = new Map();
const conversations = new Set();       // private conversations announced by `dm`
let wanted = JSON.parse(sessionStorage.getItem("shequ.channels") || "[]"); // to be in, across reconnects

function remember() {
  sessionStorage.setItem("shequ.channels", JSON.stringify(wanted));
}

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
  const channel = msg.channel || "";
  if (msg.id <= (lastIn.get(channel) || 0)) return; // already shown
  lastIn.set(channel, msg.id);
  if (msg.id > lastId) {
    lastId = msg.id;
    sessionStorage.setItem("shequ.lastId", String(lastId));
  }
  const li = document.createElement("li");
  li.dataset.id = msg.id;
  li.dataset.channel = channel;
  li.hidden = protocol === 2 && channel !== current;
  // Unread: new in another channel; what the tab had before a reload is context, not news.
  if (li.hidden && msg.id > storedId) {
    unread.set(channel, (unread.get(channel) || 0) + 1);
    renderChannels();
  }
  const who = document.createElement("span");
  who.className = "who";
  // Without a user, the site posted it in its own name.
  who.textContent = msg.user_id === undefined ? "(site)" : msg.username;
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

// The channel list: joined channels, channels wanted back, and announced conversations.
function renderChannels() {
  const nav = $("channels");
  nav.hidden = protocol !== 2;
  if (protocol !== 2) return;
  const names = [...new Set([...joined, ...wanted, ...conversations])];
  const items = names.map((name) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.channel = name;
    button.textContent = name;
    if (name === current) button.setAttribute("aria-current", "true");
    const n = unread.get(name) || 0;
    if (n > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = String(n);
      button.append(badge);
    }
    button.addEventListener("click", () => switchTo(name));
    li.append(button);
    return li;
  });
  $("channel-list").replaceChildren(...items);
  $("online").textContent = onlineIn.has(current) ? `${onlineIn.get(current)} online` : "";
}

function join(channel, since) {
  if (!ws || ws.readyState !== WebSocket.OPEN || joined.has(channel) || pending.has(channel)) return;
  pending.add(channel);
  const frame = { type: "join", channel };
  if (since !== null && since !== undefined) frame.since = since;
  ws.send(JSON.stringify(frame));
}

// Shows another channel: joins it if need be, keeps it in the URL, clears its unread count.
function switchTo(channel) {
  current = channel;
  unread.delete(channel);
  // Joins it unless it is in it already: a conversation from a `dm` notice from its beginning,
  // a channel shown before from its last message, any other from its recent messages.
  join(channel, conversations.has(channel) ? 0 : lastIn.get(channel));
  if (!wanted.includes(channel)) {
    wanted.push(channel);
    remember();
  }
  const params = new URLSearchParams(location.hash.slice(1));
  params.set("channel", channel);
  history.replaceState(null, "", `#${params}`);
  for (const li of list.children) {
    if (li.dataset.channel !== undefined) li.hidden = li.dataset.channel !== channel;
  }
  renderChannels();
  list.scrollTop = list.scrollHeight;
}

// `dm:<a>:<b>` with the two ids sorted, as the server names a private conversation.
function conversationWith(other) {
  const [a, b] = [myId, other].sort();
  return `dm:${a}:${b}`;
}

// What the page says about a refused connection, by HTTP status; `retry` keeps trying.
function refusal(status, reason) {
  switch (status) {
    case 401: return { text: `Cannot connect: ${reason}. Paste a new token and connect.`, retry: false };
    case 403:
      if (reason.startsWith("banned")) return { text: `You are ${reason.replace("T", " ").replace(/:\d\dZ$/, " UTC")}.`, retry: false };
      return { text: "Cannot connect: not allowed from this origin (the server's allowed_origins).", retry: false };
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
  joined.clear();
  pending.clear();
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
        if (msg.protocol === 2) {
          protocol = 2;
          myId = msg.user_id;
          msg.channels.forEach((c) => joined.add(c));
          if (msg.online !== undefined && msg.channels.length > 0) onlineIn.set(msg.channels[0], msg.online);
          // Back in every channel it was in, from where it left off.
          for (const c of wanted) if (!joined.has(c)) join(c, resume);
          if (!current) current = msg.channels[0] || wanted[0] || null;
          if (current) switchTo(current);
          renderChannels();
        }
        break;
      case "joined":
        pending.delete(msg.channel);
        joined.add(msg.channel);
        if (msg.online !== undefined) onlineIn.set(msg.channel, msg.online);
        if (msg.recovered === false && lastIn.has(msg.channel)) {
          notice(`Some messages in ${msg.channel} may be missing.`);
        }
        renderChannels();
        break;
      case "left":
        joined.delete(msg.channel);
        renderChannels();
        break;
      case "dm":
        if (!joined.has(msg.channel)) {
          conversations.add(msg.channel);
          // The one shown is being joined (after a reload, say): its messages come with it.
          if (msg.channel !== current) unread.set(msg.channel, (unread.get(msg.channel) || 0) + 1);
          renderChannels();
        }
        break;
      case "chat":
        show(msg);
        break;
      case "deleted":
        // The site deleted it: gone from the page, as from the history.
        list.querySelector(`li[data-id="${msg.id}"]`)?.remove();
        break;
      case "online":
        onlineIn.set(msg.channel, msg.count);
        if (protocol !== 2 || msg.channel === current) $("online").textContent = `${msg.count} online`;
        break;
      case "pong":
        clearTimeout(pongTimer);
        break;
      case "error":
        if (msg.channel !== undefined) {
          pending.delete(msg.channel);
          setStatus(`${msg.channel}: ${msg.message}`, true);
          // A channel it may not be in is not asked for again.
          if (["forbidden", "no_such_channel"].includes(msg.code)) {
            wanted = wanted.filter((c) => c !== msg.channel);
            remember();
            renderChannels();
          }
        } else {
          setStatus(`Not sent: ${msg.message}`, true);
        }
        if (msg.code === "muted") {
          const minutes = Math.ceil((msg.until * 1000 - Date.now()) / 60000);
          setStatus(`You are muted${msg.channel ? ` in ${msg.channel}` : ""} for ${minutes} more minute${minutes === 1 ? "" : "s"}; this message was not sent.`, true);
        }
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
    if (event.code === 4008) {
      setStatus("The site disconnected you. Reload the page to come back.", true);
      return;
    }
    if (event.code === 4009) {
      setStatus("You are banned from this chat.", true);
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
  const frame = protocol === 2 && current ? { type: "chat", channel: current, content } : { type: "chat", content };
  ws.send(JSON.stringify(frame));
  input.value = "";
});

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("join-name").value.trim();
  if (!name) return;
  $("join-name").value = "";
  switchTo(name.startsWith("@") ? conversationWith(name.slice(1)) : name);
});

const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  tokenField.value = fromHash;
  connect();
}
