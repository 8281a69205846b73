// The page on a phone, with tokens it cannot use, and after the idle timeout, in real Chromium.
// Exit code 0 when every check passed.
// Usage: node states.mjs BASE_URL IDLE_BASE_URL TOKEN EXPIRED_TOKEN PHONE_SCREENSHOT_PATH
// The server behind IDLE_BASE_URL closes idle connections after a second or two; the one behind
// BASE_URL does not, so that nothing else here races the idle timeout.
import assert from "node:assert/strict";
import { TIMEOUT, countSockets, launch } from "./launch.mjs";

const [base, idleBase, good, expired, screenshot] = process.argv.slice(2);

const browser = await launch();
try {
  // A 320 px phone: nothing scrolls sideways, every control is whole and finger-sized.
  const phone = await browser.newContext({ viewport: { width: 320, height: 640 }, hasTouch: true,
                                           isMobile: true, deviceScaleFactor: 2 });
  const page = await phone.newPage();
  page.setDefaultTimeout(TIMEOUT);
  await countSockets(page);
  await page.goto(`${base}/#token=${good}`);
  await page.locator("#status", { hasText: "Connected as" }).waitFor();
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 320, `the page is ${width} px wide at 320`);
  for (const id of ["#send", "#input", "#token", "#login button"]) {
    const box = await page.locator(id).boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= 320, `${id} is cut off: ${JSON.stringify(box)}`);
    assert.ok(box.height >= 44, `${id} is ${box.height} px high`);
  }
  await page.fill("#input", "from a phone");
  await page.locator("#send").tap();
  await page.locator("#messages .content", { hasText: "from a phone" }).waitFor();
  await page.screenshot({ path: screenshot });
  console.log(`phone layout: ${width} px wide, controls whole; screenshot: ${screenshot}`);

  // Idle timeout: a quiet notice, no reconnect until the user is back.
  const idle = await phone.newPage();
  idle.setDefaultTimeout(TIMEOUT);
  await countSockets(idle);
  await idle.goto(`${idleBase}/#token=${good}`);
  await idle.locator("#status", { hasText: "Paused after a quiet while" }).waitFor();
  const before = await idle.evaluate(() => window.__sockets);
  await idle.waitForTimeout(3000); // longer than any retry backoff would wait
  assert.equal(await idle.evaluate(() => window.__sockets), before, "reconnected while idle");
  await idle.locator("#messages").tap();
  await idle.locator("#status", { hasText: "Connected as" }).waitFor();
  assert.equal(await idle.evaluate(() => window.__sockets), before + 1);
  await idle.close();
  console.log("idle: paused, then back on a tap");

  // Tokens the server refuses: the reason in words, and no retry loop.
  for (const [token, words] of [[expired, "token expired"], ["not.a.jwt", "invalid token"]]) {
    const p = await phone.newPage();
    p.setDefaultTimeout(TIMEOUT);
    await countSockets(p);
    await p.goto(`${base}/#token=${token}`);
    await p.locator("#status", { hasText: words }).waitFor();
    await p.waitForTimeout(2000); // the first retry would come within a second
    assert.equal(await p.evaluate(() => window.__sockets), 1, `${words}: it kept retrying`);
    assert.match(await p.locator("#status").textContent(), new RegExp(words));
    console.log(`${words}: said in words, no retry`);
    await p.close();
  }
} finally {
  await browser.close();
}
