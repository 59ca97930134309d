"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, for the
dashboard's end-to-end test. The Makefile installs both packages when they are missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--window-size=1360,1400"]


def screenshots_dir() -> Path:
    """Where the test saves a screenshot of each page (a test artefact, looked at by a person)."""
    path = Path(os.environ.get("WHETSTONE_TEST_SCREENSHOTS", ".cache/screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, "needs Debian's chromium and chromium-driver: `make install` installs them (as root)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()
