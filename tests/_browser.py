"""A real browser for the page tests: Debian's headless chromium driven by Selenium.

chromium and chromedriver come from ``scripts/install-system-deps.sh`` (``make test`` runs it);
without them the tests skip naming that script. Selenium is told both paths, so it never tries
to download a browser or a driver. Screenshots go to ``tests/artifacts/ui/`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"
WINDOW = (1280, 900)


def _tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"]))
        if path:
            return path
    pytest.skip(f"{names[0]} is not installed: run scripts/install-system-deps.sh (CI does)")


@contextmanager
def chromium(tmp_dir: Path) -> Iterator[Any]:
    """A headless chromium session (its own profile under ``tmp_dir``), quit on exit."""
    browser_path = _tool("chromium", "chromium-browser")
    driver_path = _tool("chromedriver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never reach for the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_dir / 'profile'}",
        "--lang=en-GB",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.set_capability("unhandledPromptBehavior", "ignore")  # an alert() must stay visible
    service = Service(executable_path=driver_path, log_output=str(tmp_dir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, predicate: Callable[[Any], Any], timeout_s: float = 30) -> Any:
    """Poll ``predicate(driver)`` until truthy; its value. Times out with the page's errors."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(predicate)
    except TimeoutException as err:
        shown = [e.text for e in driver.find_elements("css selector", ".error:not([hidden])")]
        raise AssertionError(f"page never got there; errors shown: {shown}") from err


def shown_error(driver: Any, box_id: str, timeout_s: float = 30) -> Any:
    """The error box ``box_id`` once the page shows it."""
    return wait_for(
        driver, lambda d: (box := d.find_element("id", box_id)).is_displayed() and box, timeout_s
    )


def screenshot(driver: Any, name: str) -> Path:
    """Save the whole page (as tall as its content) to tests/artifacts/ui/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(height, min(full + 140, 4000)))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)
    return path


def console_problems(driver: Any) -> list[str]:
    """Console entries that mean the page broke: script errors and CSP refusals."""
    problems = []
    for entry in driver.get_log("browser"):
        text = entry["message"]
        broke = entry["source"] == "javascript" or "Refused to" in text
        if broke or "Content Security Policy" in text:
            problems.append(text)
    return problems
