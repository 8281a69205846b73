// The page on a server with channels, in real Chromium: two users in two channels see only
// their own channel's messages; unread counts; switching by click and by `#channel=`; a private
// conversation; a reload that comes back to the same channel and misses nothing.
// Usage: node channels.mjs BASE_URL TOKEN_USER_1 TOKEN_USER_2 SCREENSHOT_PATH
import assert from "node:assert/strict";
import { TIMEOUT, launch } from "./launch.mjs";

const [base, one, two, screenshot] = process.argv.slice(2);

const browser = await launch();
try {
  const open = async (token, channel) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    await page.goto(`${base}/#token=${token}&channel=${channel}`);
    await page.locator("#status", { hasText: "Connected as" }).waitFor();
    await page.locator(`#channel-list button[data-channel="${channel}"][aria-current="true"]`).waitFor();
    return page;
  };
  const send = async (page, text) => {
    await page.fill("#input", text);
    await page.press("#input", "Enter");
  };
  const visible = (page) => page.locator("#messages li:not(.notice):visible .content").allTextContents();
  const shown = (page, text) => page.locator("#messages li:visible .content", { hasText: text }).first().waitFor();
  const button = (page, channel) => page.locator(`#channel-list button[data-channel="${channel}"]`);

  const a = await open(one, "forum:1");
  const b = await open(two, "forum:2");
  console.log("each page opened in the channel its URL names");

  await send(a, "in forum 1");
  await send(b, "in forum 2");
  await shown(a, "in forum 1");
  await shown(b, "in forum 2");
  assert.deepEqual(await visible(a), ["in forum 1"]);
  assert.deepEqual(await visible(b), ["in forum 2"]);
  console.log("two users in two channels see only their channel's messages");

  // B posts in the lobby, which A is in but not looking at: an unread count.
  await button(b, "lobby").click();
  await send(b, "hello lobby");
  await button(a, "lobby").locator(".unread", { hasText: "1" }).waitFor();
  await button(a, "lobby").click();
  await shown(a, "hello lobby");
  assert.equal(await button(a, "lobby").locator(".unread").count(), 0);
  assert.match(a.url(), /channel=lobby/);
  assert.deepEqual(await visible(a), ["hello lobby"], "switching shows only the lobby");
  console.log("unread count, then switching without reconnecting");

  // A private conversation: A opens it by user id; B is told and opens it.
  await a.fill("#join-name", "@2");
  await a.press("#join-name", "Enter");
  await a.locator('#channel-list button[data-channel="dm:1:2"][aria-current="true"]').waitFor();
  await send(a, "psst");
  await shown(a, "psst");
  await button(b, "dm:1:2").locator(".unread", { hasText: "1" }).waitFor();
  await button(b, "dm:1:2").click();
  await shown(b, "psst");
  console.log("a private conversation, announced to the other user");

  // A reloads while B writes in the conversation: back in it, each message once.
  const reloading = a.reload();
  for (let i = 1; i <= 5; i++) await send(b, `dm ${i}`);
  await reloading;
  await a.locator("#status", { hasText: "Connected as" }).waitFor();
  await shown(a, "dm 5");
  const dm = (await visible(a)).filter((m) => m === "psst" || m.startsWith("dm "));
  assert.deepEqual(dm, ["psst", "dm 1", "dm 2", "dm 3", "dm 4", "dm 5"]);
  assert.equal(await a.locator("#channel-list .unread").count(), 0, "context after a reload is not unread");
  console.log("a reload returns to the conversation and shows each message once");

  await a.screenshot({ path: screenshot });
  console.log(`screenshot: ${screenshot}`);
} finally {
  await browser.close();
}
