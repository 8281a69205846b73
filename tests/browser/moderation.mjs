// What the site's moderation looks like on the page, in real Chromium: a site notice, a deleted
// message disappearing, a mute with its time left, a disconnect and a ban that say so and do not
// reconnect. Exit code 0 when every check passed.
// Usage: node moderation.mjs BASE_URL API_URL API_KEY TOKEN_5 TOKEN_6 SCREENSHOT_PATH
import assert from "node:assert/strict";
import { TIMEOUT, countSockets, launch } from "./launch.mjs";

const [base, apiUrl, key, token5, token6, screenshot] = process.argv.slice(2);

async function api(method, path, body) {
  const response = await fetch(`${apiUrl}${path}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  assert.equal(response.status, 200, `${method} ${path}: ${JSON.stringify(answer)}`);
  return answer;
}


async function open(context, token) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  await countSockets(page);
  await page.goto(`${base}/#token=${token}`);
  return page;
}

const browser = await launch();
try {
  const context = await browser.newContext();
  const page = await open(context, token5);
  await page.locator("#status", { hasText: "Connected as" }).waitFor();

  // A notice from the site, shown as the site's; a message deleted by the site disappears.
  await api("POST", "/api/publish", { content: "maintenance at 22:00" });
  const notice = page.locator("#messages li", { hasText: "maintenance at 22:00" });
  await notice.locator(".who", { hasText: "(site)" }).waitFor();
  const { id } = await api("POST", "/api/publish", { content: "a message to delete", user_id: "9" });
  const doomed = page.locator("#messages li", { hasText: "a message to delete" });
  await doomed.waitFor();
  await api("DELETE", `/api/messages/${id}`);
  await doomed.waitFor({ state: "detached" });
  console.log("a site notice shows as the site's; a deleted message disappears");

  // Muted: the page says for how long, and stays connected.
  await api("POST", "/api/mute", { user_id: "5", for_secs: 600 });
  await page.fill("#input", "can I talk?");
  await page.click("#send");
  await page.locator("#status", { hasText: "You are muted for 10 more minutes" }).waitFor();
  await page.screenshot({ path: screenshot });
  console.log("a mute shows the time left");

  // Disconnected by the site: said, and no reconnect.
  await api("POST", "/api/disconnect", { user_id: "5" });
  await page.locator("#status", { hasText: "The site disconnected you" }).waitFor();
  await page.waitForTimeout(2000); // the first retry would come within a second
  assert.equal(await page.evaluate(() => window.__sockets), 1, "it reconnected after 4008");
  console.log("a disconnect is said, and the page does not reconnect");

  // Banned while connected, then refused on the next visit: said, and no retry loop.
  const other = await open(context, token6);
  await other.locator("#status", { hasText: "Connected as" }).waitFor();
  await api("POST", "/api/ban", { user_id: "6", for_secs: 3600 });
  await other.locator("#status", { hasText: "You are banned from this chat" }).waitFor();
  const again = await open(context, token6);
  await again.locator("#status", { hasText: /You are banned until \d{4}-\d\d-\d\d \d\d:\d\d UTC/ }).waitFor();
  await again.waitForTimeout(2000);
  assert.equal(await again.evaluate(() => window.__sockets), 1, "it kept retrying while banned");
  console.log("a ban is said, with its end, and the page does not retry");
} finally {
  await browser.close();
}
