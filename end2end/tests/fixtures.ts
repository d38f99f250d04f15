// A `page` fixture that fails the test on any uncaught error or console error, and saves
// a full-page screenshot of where each test ended.
import { test as base, expect } from '@playwright/test';

export const test = base.extend({
  page: async ({ page }, use, testInfo) => {
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') problems.push(`console.error: ${msg.text()}`);
    });
    await use(page);
    await page.screenshot({
      path: testInfo.outputPath('page.png'),
      fullPage: true,
    });
    expect(problems, 'browser console must stay clean').toEqual([]);
  },
});

export { expect };

/** Waits until the page has hydrated: the app enables this control only in the browser. */
export async function hydrated(page: import('@playwright/test').Page, selector: string) {
  await expect(page.locator(selector)).toBeEnabled();
}
