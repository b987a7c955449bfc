// tests/dashboard.mjs: drives the dashboard in Debian's headless Chromium (playwright-core
// from npm, pointed at /usr/bin/chromium; nothing is downloaded).
//
//   node tests/dashboard.mjs test BASE_URL TOKEN OUT_DIR
//     against a daemon whose token is TOKEN and whose periodic adaptation is off: the page
//     loads, the loss chart gets points, the page says it is read-only without the token and
//     its controls are disabled; after POST /v1/adapt (which the test config makes shrink)
//     the widths chart shows a change; a screenshot goes to OUT_DIR/dashboard-test.png; with
//     the token typed in, the policy form sets shrink_threshold and GET /v1/policy shows it.
//     Prints "ok" / "FAIL" lines and "N passed, N failed"; exit code 1 on any failure.
//   node tests/dashboard.mjs screenshot BASE_URL OUT.png [WIDTH]
//     the page once its charts have points, full height (scripts/dashboard_screenshot.sh).
import { chromium } from "playwright-core";

const [mode, base, arg3, arg4] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
let pass = 0, fail = 0;
const ok = (m) => { pass++; console.log("ok    " + m); };
const bad = (m, why) => { fail++; console.log("FAIL  " + m + (why ? ": " + why : "")); };

async function launch(width) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({viewport: {width, height: 1000}});
  page.on("pageerror", (e) => bad("no script error on the page", String(e)));
  return {browser, page};
}

const points = (page, id) => page.$eval(id, (e) => Number(e.dataset.points || 0));

async function screenshot() {
  const out = arg3, width = Number(arg4 || 1500);
  const {browser, page} = await launch(width);
  await page.goto(base + "/", {waitUntil: "load"});
  await page.waitForFunction(() => Number(document.querySelector("#chart-loss").dataset.points) > 0,
                             null, {timeout: 60000});
  await page.waitForTimeout(2500); // a few stream updates and the spectrum
  await page.screenshot({path: out, fullPage: true});
  await browser.close();
  console.log("wrote " + out);
}

async function test() {
  const token = arg3, outDir = arg4;
  const {browser, page} = await launch(1400);
  try {
    await page.goto(base + "/", {waitUntil: "load"});
    ok("GET / loads the page");
    try {
      await page.waitForFunction(() => Number(document.querySelector("#chart-loss").dataset.points) > 0,
                                 null, {timeout: 30000});
      ok(`the loss chart has points (${await points(page, "#chart-loss")})`);
    } catch (e) {
      bad("the loss chart has points", "none within 30 s");
    }
    await page.waitForFunction(() => document.querySelector("#conn").textContent === "live", null,
                               {timeout: 15000})
      .then(() => ok("the page follows /v1/stream (live)"), () => bad("stream live", "not live in 15 s"));
    const note = await page.textContent("#auth-note");
    const disabled = await page.$eval("[data-action=adapt]", (b) => b.disabled);
    const polDisabled = await page.$eval("#policy-shrink_threshold", (i) => i.disabled).catch(() => null);
    if (/read-only/i.test(note) && /token/i.test(note) && disabled && polDisabled === true)
      ok("without the token the page is read-only and says why: " + JSON.stringify(note));
    else bad("read-only without a token", `note ${JSON.stringify(note)}, adapt disabled ${disabled}, policy disabled ${polDisabled}`);

    // A width change after POST /v1/adapt (periodic adaptation is off in the test config).
    const c0 = await page.$eval("#chart-widths", (e) => Number(e.dataset.changes));
    const w0 = await page.textContent("#widths-now");
    const r = await fetch(base + "/v1/adapt", {method: "POST", headers: {Authorization: "Bearer " + token}});
    const j = await r.json();
    const moved = j.last_event && JSON.stringify(j.last_event.widths_before) !== JSON.stringify(j.last_event.widths_after);
    if (r.status === 200 && moved) ok(`POST /v1/adapt changed widths ${JSON.stringify(j.last_event.widths_after)}`);
    else bad("POST /v1/adapt changes widths", `${r.status} ${JSON.stringify(j).slice(0, 300)}`);
    try {
      await page.waitForFunction((c) => Number(document.querySelector("#chart-widths").dataset.changes) > c, c0,
                                 {timeout: 20000});
      ok(`the widths chart shows the change (${await page.$eval("#chart-widths", (e) => e.dataset.changes)} changes)`);
      await page.waitForFunction((w) => document.querySelector("#widths-now").textContent !== w, w0,
                                 {timeout: 10000});
      ok(`the widths line follows (${w0} -> ${await page.textContent("#widths-now")})`);
    } catch (e) {
      bad("the widths chart shows a change after POST /v1/adapt", `data-changes stayed ${c0}`);
    }
    const marks = await page.evaluate(() => document.querySelector("#events").textContent);
    if (/shrink|grow/.test(marks)) ok("the event log lists the surgery");
    else bad("the event log lists the surgery", marks.slice(0, 200));
    await page.waitForTimeout(1200); // the spectrum of the new net
    const spec = await points(page, "#chart-spectrum");
    if (spec > 0) ok(`the spectrum chart shows ${spec} singular values`);
    else bad("spectrum chart", "no points");
    await page.screenshot({path: outDir + "/dashboard-test.png", fullPage: true});
    ok("screenshot " + outDir + "/dashboard-test.png");

    // The token, then the policy form.
    await page.fill("#token", token);
    await page.click("#token-use");
    await page.waitForFunction(() => !document.querySelector("#policy-shrink_threshold").disabled, null,
                               {timeout: 10000})
      .then(() => ok("with the token the controls are enabled"), () => bad("controls enabled with the token"));
    await page.fill("#policy-shrink_threshold", "0.123");
    await page.click("#policy-apply");
    await page.waitForFunction(() => /policy changed/.test(document.querySelector("#policy-msg").textContent),
                               null, {timeout: 10000})
      .catch(() => {});
    const pol = await (await fetch(base + "/v1/policy")).json();
    if (pol.shrink_threshold === 0.123) ok("the policy form set shrink_threshold: /v1/policy shows 0.123");
    else bad("policy form", `/v1/policy shrink_threshold ${pol.shrink_threshold}; page says ${await page.textContent("#policy-msg")}`);
    // A bad value is refused with the daemon's reason, and the policy stays.
    await page.fill("#policy-shrink_threshold", "7");
    await page.click("#policy-apply");
    await page.waitForFunction(() => /422/.test(document.querySelector("#policy-msg").textContent), null,
                               {timeout: 10000})
      .then(async () => ok("a bad value shows the daemon's reason: " + await page.textContent("#policy-msg")),
            () => bad("bad policy value reported"));
    const pol2 = await (await fetch(base + "/v1/policy")).json();
    if (pol2.shrink_threshold === 0.123) ok("the refused value left the policy alone");
    else bad("policy after a refused value", String(pol2.shrink_threshold));
  } finally {
    await browser.close();
  }
  console.log(`${pass} passed, ${fail} failed`);
  process.exit(fail ? 1 : 0);
}

try {
  if (mode === "screenshot") await screenshot();
  else if (mode === "test") await test();
  else { console.error("usage: dashboard.mjs test BASE TOKEN OUT_DIR | screenshot BASE OUT.png [WIDTH]"); process.exit(2); }
} catch (e) {
  bad("the browser run", e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : String(e));
  console.log(`${pass} passed, ${fail} failed`);
  process.exit(1);
}
