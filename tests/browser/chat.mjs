// Two users chat in the page in real Chromium; one reloads and misses nothing; a third tab
// replaces the first; user content is shown as text. Exit code 0 when every check passed.
// Usage: node chat.mjs BASE_URL TOKEN_ALICE TOKEN_BOB TOKEN_SHORT_LIVED SCREENSHOT_PATH
import assert from "node:assert/strict";
import { TIMEOUT, launch } from "./launch.mjs";

const [base, alice, bob, shortLived, screenshot] = process.argv.slice(2);

const browser = await launch();
try {
  const context = await browser.newContext();
  const open = async (token) => {
    const page = await context.newPage();
    page.setDefaultTimeout(TIMEOUT);
    await page.goto(`${base}/#token=${token}`);
    await page.locator("#status", { hasText: "Connected as" }).waitFor();
    return page;
  };
  const messages = (page) => page.locator("#messages li:not(.notice) .content").allTextContents();
  const send = async (page, text) => {
    await page.fill("#input", text);
    await page.press("#input", "Enter");
  };
  const waitFor = async (page, text) =>
    page.locator("#messages .content", { hasText: text }).first().waitFor();

  const a = await open(alice);
  const b = await open(bob);
  await a.locator("#online", { hasText: "2 online" }).waitFor();
  await b.locator("#online", { hasText: "2 online" }).waitFor();
  console.log("two users connected; both see 2 online");
  const carol = await open(shortLived);

  await send(a, "hello from alice");
  await waitFor(b, "hello from alice");
  await send(b, "hi alice");
  await waitFor(a, "hi alice");
  console.log("chat both ways");

  // Alice reloads while Bob sends 20 messages.
  const reloading = a.reload();
  for (let i = 1; i <= 20; i++) await send(b, `burst ${i}`);
  await reloading;
  await a.locator("#status", { hasText: "Connected as" }).waitFor();
  await waitFor(a, "burst 20");
  const burst = (await messages(a)).filter((m) => m.startsWith("burst "));
  assert.deepEqual(burst, Array.from({ length: 20 }, (_, i) => `burst ${i + 1}`),
    "after the reload every message shows once, in order");
  console.log("reload during a burst: all 20 shown once, in order");

  // A third page as Alice replaces the reloaded one.
  const a2 = await open(alice);
  await a.locator("#status", { hasText: "opened in another tab" }).waitFor();
  console.log("the replaced page says so");

  // HTML injection shows as text.
  const evil = `<img src=x onerror="window.__pwned=1">`;
  await send(b, evil);
  await waitFor(a2, "<img");
  assert.equal(await a2.locator("#messages img").count(), 0, "no element was injected");
  assert.ok((await messages(a2)).includes(evil), "the markup shows as text");
  assert.equal(await a2.evaluate(() => window.__pwned), undefined, "no script ran");
  console.log("HTML injection shown as text");

  // Carol's token runs out while the rest goes on: her page must ask for a new one.
  await carol.locator("#status", { hasText: "session expired" }).waitFor();
  assert.equal(await carol.locator("#input").isDisabled(), true);
  console.log("an expired session asks for a new token");

  await a2.screenshot({ path: screenshot });
  console.log(`screenshot: ${screenshot}`);
} finally {
  await browser.close();
}
