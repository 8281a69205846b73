// Debian's Chromium, headless, as every browser test starts it.
import { chromium } from "playwright-core";

export const TIMEOUT = 20000;

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"],
  });
}

// Counts the page's WebSocket attempts in window.__sockets, to see whether it retries.
export const countSockets = (page) => page.addInitScript(() => {
  window.__sockets = 0;
  const Real = window.WebSocket;
  window.WebSocket = function (...args) { window.__sockets++; return new Real(...args); };
  window.WebSocket.prototype = Real.prototype;
  Object.assign(window.WebSocket, { OPEN: Real.OPEN, CLOSED: Real.CLOSED });
});
