"""Headless Chromium (Debian's chromium and chromium-driver, same version) driven by selenium:
open a page, wait for it to load, and read what the browser rendered."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import IN_CI

# What the page shows once loaded: every <img> with whether the browser decoded it.
RENDERED = """return {
  title: document.title,
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  mistakes: document.querySelectorAll('figure.mistake').length,
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                         height: i.naturalHeight, shown: i.getBoundingClientRect().width})),
  text: document.body.innerText,
};"""


def chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        why = "needs Debian's chromium and chromium-driver (tests/install_prereqs.sh installs them as root)"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(reason=why)
    return browser, driver


def render(page: Path, screenshot: Path | None = None) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    browser, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--window-size=1200,900"):
        options.add_argument(arg)
    # A driver path given: selenium skips Selenium Manager, which would look for a driver online.
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        session.get(Path(page).resolve().as_uri())
        WebDriverWait(session, 30).until(lambda s: s.execute_script("return document.readyState") == "complete")
        found = session.execute_script(RENDERED)
        if screenshot:
            session.save_screenshot(str(screenshot))
        return found
    finally:
        session.quit()
