// Every page at desktop and phone widths: no console errors (the fixture), nothing wider
// than the screen, and a screenshot of each saved under test-results/screens/.
import { test, expect, signIn, ADMIN } from './fixtures';
import { join } from 'node:path';

const pages = [
  ['overview', '/', 'Overview'],
  ['jwks', '/config/jwks', 'Config → JWKS'],
  ['schedule', '/config/schedule', 'Config → Schedule'],
  ['events', '/events', 'Events'],
  ['settings', '/settings', 'Settings'],
] as const;

for (const width of [1280, 390]) {
  test(`every page at ${width} px`, async ({ page }, testInfo) => {
    await page.setViewportSize({ width, height: 900 });
    await page.goto('/login');
    await page.waitForLoadState('networkidle');
    await page.screenshot({ path: join(testInfo.project.outputDir, 'screens', `login-${width}.png`), fullPage: true });
    await signIn(page, ADMIN);
    for (const [name, path, heading] of pages) {
      await page.goto(path);
      await expect(page.getByRole('heading', { level: 1 })).toHaveText(heading);
      await page.waitForLoadState('networkidle');
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      expect(overflow, `${path} is wider than the screen`).toBeLessThanOrEqual(0);
      await page.screenshot({ path: join(testInfo.project.outputDir, 'screens', `${name}-${width}.png`), fullPage: true });
    }
  });
}

test('keyboard: skip link, visible focus, and the rotate dialog open and close with keys', async ({ page }) => {
  await signIn(page, ADMIN);
  await page.keyboard.press('Tab');
  const skip = page.getByRole('link', { name: 'Skip to content' });
  await expect(skip).toBeFocused();
  await expect(skip).toBeInViewport();

  const rotate = page.getByRole('button', { name: 'Rotate Keys' });
  await expect(rotate).toBeEnabled();
  await rotate.focus();
  const ring = await rotate.evaluate((el) => getComputedStyle(el).boxShadow);
  expect(ring, 'focused buttons show a ring').not.toBe('none');
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: 'Rotate Keys?' });
  await expect(dialog).toBeVisible();
  await page.keyboard.press('Escape');
  await expect(dialog).toBeHidden();
});
