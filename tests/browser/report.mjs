// Opens a job report in headless Chromium with the network off (run by tests/tests/dashboard.rs).
//   REPORT       the report's HTML file
//   CLASSES      classes of the job
//   SCREENSHOTS  folder for the screenshot
import { mkdirSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { chromium } from './node_modules/playwright-core/index.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const report = env('REPORT');
const classes = Number(env('CLASSES'));
const screenshots = env('SCREENSHOTS');
mkdirSync(screenshots, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 }, offline: true });
  const external = [];
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith('file:') || url.startsWith('data:')) return route.continue();
    external.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  await page.goto(pathToFileURL(report).href, { waitUntil: 'load' });
  check(external.length === 0, `the report asks for nothing outside itself (${external})`);
  for (const section of ['spec', 'data', 'curves', 'per-class', 'confusion', 'misclassified']) {
    check(await page.locator(`section#${section}`).count() === 1, `the report has its ${section} section`);
  }
  check(await page.locator('#class-distribution').count() === 1, 'the data section plots the class distribution');
  check(await page.locator('#epoch-curve circle.point').count() > 0, 'the curves are drawn');
  const cells = await page.locator('section#confusion rect.cell').count();
  check(cells === classes * classes, `the heatmap has classes x classes cells (${cells})`);
  const thumbnails = page.locator('figure.thumbnail img');
  const count = await thumbnails.count();
  check(count > 0, `the report shows misclassified test images (${count})`);
  const decoded = await thumbnails.evaluateAll((images) => images.filter((image) => image.complete && image.naturalWidth > 0).length);
  check(decoded === count, `every thumbnail decodes in the browser (${decoded} of ${count})`);
  const captions = await page.locator('figure.thumbnail figcaption').allTextContents();
  check(captions.every((caption) => caption.includes('→') || caption.includes('->')), 'each thumbnail names its true and predicted class');
  await page.screenshot({ path: `${screenshots}/report.png`, fullPage: true });
} finally {
  await browser.close();
}
