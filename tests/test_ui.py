"""The web page (/ui/, OLTR_UI) in a real browser against a real uvicorn on the default model.

Debian's headless chromium, driven by Selenium (tests/_browser.py), uses the page as a person
would: picks files, reads what the page shows, presses keys. What the page shows is compared with
what the API answers for the same bytes. Screenshots of each view go to tests/artifacts/ui/.
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from _browser import chromium, console_problems, screenshot, shown_error, wait_for
from _service_fixtures import (
    ServiceProcess,
    build_standin,
    imagenet_photos,
    metric_value,
    mnist_digits,
    running_service,
    serving_model,
    solid,
    write_model,
)
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.routes.ui import UI_FILES

pytestmark = pytest.mark.slow

TOKEN = "page-admin-token-123"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@contextmanager
def page_service(root: Path, **env: str) -> Iterator[ServiceProcess]:
    """The default model with the page on and the admin token set, plus ``env``."""
    path, _ = serving_model(root)
    env = {
        "OLTR_MODEL_PATH": str(path),
        "OLTR_UI": "true",
        "OLTR_ADMIN_TOKEN": TOKEN,
        "OLTR_WARMUP_RUNS": "1",
        **env,
    }
    with running_service(env, root / "service.log") as svc:
        yield svc


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """Two files per request at most (for a 413)."""
    with page_service(tmp_path_factory.mktemp("ui"), OLTR_MAX_FILES="2") as svc:
        yield svc


@pytest.fixture
def files(tmp_path):
    """Write (name, bytes) pairs as files the browser can pick; their paths."""

    def write(named: list[tuple[str, bytes]]) -> list[Path]:
        paths = []
        for name, data in named:
            path = tmp_path / name
            path.write_bytes(data)
            paths.append(path)
        return paths

    return write


def open_page(driver, url: str, view: str = "try", query: str = "") -> None:
    driver.get(f"{url}/ui/{query}#{view}")  # the same URL again would not load a new page:
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()  # a fresh page, no token
    wait_for(driver, lambda d: d.find_element("id", "model-line").text.startswith("Model "))
    driver.get_log("browser")  # start each test with an empty console


def pick(driver, input_id: str, paths: list[Path]) -> None:
    driver.find_element("id", input_id).send_keys("\n".join(str(p) for p in paths))


def result_cards(driver, n: int, list_id: str = "try-results") -> list:
    return wait_for(
        driver,
        lambda d: len(cards := d.find_elements("css selector", f"#{list_id} > li")) == n and cards,
    )


def card_shows(card, prediction: dict) -> None:
    """The card says what the API said: label, unknown flag, confidence, score, top-k."""
    assert card.find_element("css selector", ".label").text == prediction["label"]
    badge = card.find_elements("css selector", ".badge")
    assert bool(badge) == prediction["unknown"]
    text = card.text
    assert f"{100 * prediction['confidence']:.1f}%" in text
    assert f"{prediction['score']:.3f}" in text
    top = [e.text for e in card.find_elements("css selector", ".topk-label")]
    assert top == [k["label"] for k in prediction["top_k"]]
    meters = card.find_elements("css selector", ".topk meter")
    for meter, k in zip(meters, prediction["top_k"], strict=True):
        assert float(meter.get_attribute("value")) == pytest.approx(k["probability"], abs=1e-6)


def api_answer(url: str, name: str, data: bytes) -> dict:
    r = httpx.post(f"{url}/classify?top_k=5", files=[("file", (name, data, "image/png"))])
    r.raise_for_status()
    return r.json()


# -- serving the page ----------------------------------------------------------------------------


def test_page_is_off_unless_enabled():
    for enabled in (False, True):
        client = TestClient(create_app(Settings(ui=enabled)))  # no lifespan: no model needed
        assert client.get("/ui/").status_code == (200 if enabled else 404)


def test_page_files_carry_a_strict_content_security_policy(service):
    r = httpx.get(f"{service.url}/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "ui/"
    pages = {"": "text/html", **{n: t.split(";")[0] for n, t in UI_FILES.items()}}
    for name, media_type in pages.items():
        r = httpx.get(f"{service.url}/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
        csp = [part.strip() for part in r.headers["content-security-policy"].split(";")]
        assert "default-src 'self'" in csp
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "img-src 'self' blob: data:" in csp
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    for bad in ("config.py", "..%2Fconfig.py", "%2E%2E/app.py", "index.html%00.js"):
        r = httpx.get(f"{service.url}/ui/{bad}")
        assert r.status_code == 404, bad


# -- Try it --------------------------------------------------------------------------------------


def test_try_it_shows_what_the_api_answers_for_a_digit(browser, service, files):
    (digit, label), (open_digit, _) = mnist_digits([3], 1)[0], mnist_digits([7], 1)[0]
    named = [("three.png", digit), ("seven.png", open_digit)]
    open_page(browser, service.url)
    pick(browser, "try-files", files(named))
    cards = result_cards(browser, 2)
    for card, (name, data) in zip(cards, named, strict=True):
        answer = api_answer(service.url, name, data)
        assert card.find_element("css selector", "h3").text == name
        card_shows(card, answer["predictions"][0])
    assert cards[0].find_element("css selector", ".label").text == str(label)
    summary = browser.find_element("id", "try-summary").text
    assert summary.startswith("2 images classified by model ")
    assert console_problems(browser) == []
    screenshot(browser, "try-it-digits")


@pytest.mark.data
def test_try_it_shows_a_photo_and_a_digit_as_the_api_answers(browser, service, files):
    photos = imagenet_photos(1)
    if not photos:
        pytest.skip("../shared/data is absent: no photos")
    named = [("digit-4.png", mnist_digits([4], 1)[0][0]), photos[0]]
    open_page(browser, service.url)
    pick(browser, "try-files", files(named))
    cards = result_cards(browser, 2)
    for card, (name, data) in zip(cards, named, strict=True):
        assert card.find_element("css selector", "h3").text == name
        card_shows(card, api_answer(service.url, name, data)["predictions"][0])
        img = card.find_element("css selector", "img.thumb")
        assert img.get_attribute("src").startswith("blob:")
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 0
    assert console_problems(browser) == []
    screenshot(browser, "try-it")


DROP_FILE = """
const [b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, { type: "image/png" }));
const zone = document.getElementById("drop");
for (const kind of ["dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(kind, { dataTransfer: data, bubbles: true, cancelable: true }));
}
"""


def test_a_file_dropped_on_the_box_is_classified(browser, service):
    digit = mnist_digits([5], 1)[0][0]
    open_page(browser, service.url)
    browser.execute_script(DROP_FILE, base64.b64encode(digit).decode(), "dropped-5.png")
    card = result_cards(browser, 1)[0]
    assert card.find_element("css selector", "h3").text == "dropped-5.png"
    card_shows(card, api_answer(service.url, "dropped-5.png", digit)["predictions"][0])


def test_try_it_shows_the_api_errors_as_they_come(browser, service, files):
    digit = mnist_digits([1], 1)[0][0]
    open_page(browser, service.url)
    pick(browser, "try-files", files([("a.png", digit), ("b.png", digit), ("c.png", digit)]))
    error = shown_error(browser, "try-error")
    assert error.text.startswith("HTTP 413 too_many_files: ")
    assert "request id" in error.text.lower()
    pick(browser, "try-files", files([("notes.png", b"this is text, not an image" * 20)]))
    error = browser.find_element("id", "try-error")
    wait_for(browser, lambda d: error.text.startswith("HTTP 400 invalid_image: "))
    assert browser.find_elements("css selector", "#try-results > li") == []


def test_unknown_rate_follows_the_services_counters(browser, service, files):
    open_page(browser, service.url, "unknowns", "?poll_s=1")
    chart = browser.find_element("id", "rate-chart")
    assert chart.is_displayed()
    paths = files([(f"seven{i}.png", d) for i, (d, _) in enumerate(mnist_digits([7], 2))])
    browser.find_element("id", "tab-try").click()
    pick(browser, "try-files", paths)
    result_cards(browser, 2)
    browser.find_element("id", "tab-unknowns").click()
    wait_for(browser, lambda d: d.find_elements("css selector", "#rate-chart circle"))
    metrics = httpx.get(f"{service.url}/metrics").text
    unknown = metric_value(metrics, "oltr_images_classified_total", {"outcome": "unknown"})
    total = metric_value(metrics, "oltr_images_classified_total")
    wait_for(
        browser,
        lambda d: (
            f"Since the service started: {unknown:g} of {total:g} images unknown"
            in d.find_element("id", "rate-summary").text
        ),
    )
    assert console_problems(browser) == []
    screenshot(browser, "unknown-rate")


# -- safety and access -------------------------------------------------------------------------


def test_names_from_the_model_and_files_show_as_text(browser, tmp_path, files):
    """A class called <img src=x onerror=alert(1)> and a file of that name stay text."""
    classes = {XSS: (0.9, 0.1, 0.1), "blue": (0.1, 0.1, 0.9)}
    model = write_model(tmp_path / "xss" / "model.onnx", build_standin(classes=classes))
    env = {"OLTR_MODEL_PATH": str(model), "OLTR_UI": "true", "OLTR_WARMUP_RUNS": "1"}
    with running_service(env, tmp_path / "service.log") as svc:
        open_page(browser, svc.url)
        assert XSS in browser.find_element("id", "model-line").text
        pick(browser, "try-files", files([(f"{XSS}.png", solid((230, 20, 20)))]))
        card = result_cards(browser, 1)[0]
        assert card.find_element("css selector", ".label").text == XSS
        assert card.find_element("css selector", "h3").text == f"{XSS}.png"
        assert browser.find_elements("css selector", "img[src='x']") == []
        assert browser.execute_script("return document.querySelectorAll('[onerror]').length") == 0
        _no_alert(browser)
        assert console_problems(browser) == []


def _no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 -- the property raises when no alert is open


def test_keyboard_reaches_every_view_and_focus_is_visible(browser, service):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, service.url)
    seen = []
    for _ in range(20):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        seen.append(active.get_attribute("id"))
        outline = browser.execute_script(
            "const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth]",
            active,
        )
        assert outline[0] != "none" and outline[1] != "0px", (seen[-1], outline)
        if seen[-1] == "tab-enrol":
            break
    assert {"token", "token-use", "tab-try", "tab-unknowns", "tab-enrol"} <= set(seen)
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert browser.find_element("id", "view-enrol").is_displayed()
    assert not browser.find_element("id", "view-try").is_displayed()
    assert browser.find_element("id", "tab-enrol").get_attribute("aria-pressed") == "true"


def test_page_reflows_at_200_percent_zoom(browser, service, files):
    """A 1280 px window at 200% zoom is a 640 CSS px viewport: no sideways scrolling."""
    photos = imagenet_photos(1) or (("digit.png", mnist_digits([2], 1)[0][0]),)
    open_page(browser, service.url)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 640, "height": 900, "deviceScaleFactor": 2, "mobile": False},
    )
    try:
        pick(browser, "try-files", files(list(photos)))
        result_cards(browser, 1)
        for view in ("try", "unknowns", "enrol"):
            browser.find_element("id", f"tab-{view}").click()
            widths = browser.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert widths[0] <= widths[1], (view, widths)
        browser.find_element("id", "tab-try").click()
        screenshot(browser, "try-it-200-percent")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_503_with_retry_after_is_shown(browser, tmp_path, files):
    """A service still warming up answers /classify 503 + Retry-After; the page says so."""
    path, _ = serving_model(tmp_path)
    env = {
        "OLTR_MODEL_PATH": str(path),
        "OLTR_UI": "true",
        "OLTR_WARMUP_MIN_S": "600",
    }
    svc = ServiceProcess(env, tmp_path / "service.log")
    try:
        svc.wait_until("/healthz")
        open_page(browser, svc.url)
        pick(browser, "try-files", files([("one.png", mnist_digits([1], 1)[0][0])]))
        error = shown_error(browser, "try-error")
        assert error.text.startswith("HTTP 503 not_ready: model not ready")
        assert "Retry after 1 s." in error.text
    finally:
        svc.stop(signal.SIGKILL)  # SIGTERM would wait for the warm-up thread to finish its 600 s


# -- the open-world loop: captures, groups, enrolment (admin token typed into the page) ---------


@pytest.fixture(scope="module")
def loop_service(tmp_path_factory):
    """Keeping its unknowns and enrolling classes (fresh folders)."""
    root = tmp_path_factory.mktemp("ui-loop")
    env = {
        "OLTR_CAPTURE_DIR": str(root / "captures"),
        "OLTR_ENROL_DIR": str(root / "enrolled"),
        "OLTR_MAX_FILES": "32",
    }
    with page_service(root, **env) as svc:
        yield svc


def admin_requests_seen(svc: ServiceProcess) -> list[str]:
    """Access-log lines and request-metric series of any /admin route."""
    lines = [line for line in svc.logs().splitlines() if "/admin" in line]
    metrics = httpx.get(f"{svc.url}/metrics").text
    return lines + [line for line in metrics.splitlines() if 'endpoint="/admin' in line]


def use_token(driver, value: str) -> None:
    driver.find_element("id", "token").send_keys(value)
    driver.find_element("id", "token-use").click()
    wait_for(driver, lambda d: d.find_element("id", "token-state").text.startswith("Token kept"))


def test_admin_views_do_nothing_without_the_token(browser, loop_service):
    open_page(browser, loop_service.url)
    browser.find_element("id", "tab-unknowns").click()
    assert browser.find_element("css selector", "#view-unknowns .needs-token").is_displayed()
    browser.find_element("id", "unknowns-refresh").click()
    browser.find_element("id", "tab-enrol").click()
    assert browser.find_element("css selector", "#view-enrol .needs-token").is_displayed()
    browser.find_element("id", "classes-refresh").click()
    browser.find_element("id", "enrol-name").send_keys("sneaky")
    browser.find_element("id", "enrol-submit").click()
    error = shown_error(browser, "enrol-error")
    assert error.text.startswith("Admin token needed")
    assert browser.find_elements("css selector", "#classes-body tr") == []
    assert admin_requests_seen(loop_service) == []
    assert browser.execute_script("return sessionStorage.length") == 0


def test_a_wrong_token_gets_the_services_answer(browser, loop_service):
    open_page(browser, loop_service.url, "enrol")
    use_token(browser, "not-the-token-at-all")
    error = shown_error(browser, "classes-error")
    assert error.text.startswith("HTTP 403 forbidden: admin token rejected")
    browser.find_element("id", "token-forget").click()
    assert browser.execute_script("return sessionStorage.length") == 0
    assert browser.find_element("css selector", "#view-enrol .needs-token").is_displayed()


def _wait_for_captures(svc: ServiceProcess, n: int, timeout_s: float = 30) -> None:
    """Capture writes in the background: wait until the API lists ``n`` images."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + timeout_s
    while (total := httpx.get(f"{svc.url}/admin/captures", headers=auth).json()["total"]) < n:
        assert time.monotonic() < deadline, f"{total} captures listed, {n} expected"
        time.sleep(0.2)


def test_capture_group_enrol_and_undo_through_the_page(browser, loop_service, files):
    sevens = [(f"seven_{i:02d}.png", data) for i, (data, _) in enumerate(mnist_digits([7], 30))]
    open_page(browser, loop_service.url)
    use_token(browser, TOKEN)
    pick(browser, "try-files", files(sevens))
    cards = result_cards(browser, len(sevens))
    unknown = [
        c.find_element("css selector", "h3").text
        for c in cards
        if c.find_elements("css selector", ".badge")
    ]
    assert len(unknown) >= 3, "the default model should call some sevens unknown"
    _wait_for_captures(loop_service, len(unknown))

    browser.find_element("id", "tab-unknowns").click()
    summary = browser.find_element("id", "unknowns-summary")
    wait_for(browser, lambda d: summary.text.startswith(f"{len(unknown)} captured images"))
    groups = browser.find_elements("css selector", "#groups section.group")
    assert groups, summary.text
    alts = [i.get_attribute("alt") for i in browser.find_elements("css selector", "#groups img")]
    assert sorted(a.split("(")[1].split(")")[0] for a in alts) == sorted(unknown)
    wait_for(
        browser,
        lambda d: all(
            d.execute_script("return arguments[0].naturalWidth", img) > 0
            for img in d.find_elements("css selector", "#groups img")
        ),
    )
    screenshot(browser, "unknowns")

    group = groups[0]
    chosen = len(group.find_elements("css selector", "input[type=checkbox]:checked"))
    group.find_element("css selector", "button").click()
    assert browser.find_element("id", "view-enrol").is_displayed()
    assert browser.switch_to.active_element.get_attribute("id") == "enrol-name"

    browser.find_element("id", "enrol-name").send_keys(XSS)
    browser.find_element("id", "enrol-submit").click()
    error = shown_error(browser, "enrol-error")
    assert error.text.startswith(("HTTP 400", "HTTP 422"))
    assert browser.find_elements("css selector", "img[src='x']") == []
    _no_alert(browser)

    name = browser.find_element("id", "enrol-name")
    name.clear()
    name.send_keys("seven")
    before = httpx.get(f"{loop_service.url}/v1/model").json()["version"]
    browser.find_element("id", "enrol-submit").click()
    result = browser.find_element("id", "enrol-result")
    wait_for(browser, lambda d: result.text.startswith("Enrolled “seven”"))
    served = httpx.get(f"{loop_service.url}/v1/model").json()
    assert "seven" in served["class_names"] and served["version"] != before
    assert (
        f"from {chosen} examples: model version {served['version']} (was {before})" in result.text
    )
    check = result_cards(browser, 1, "enrol-check")[0]
    assert check.find_element("css selector", ".label").text == "seven"
    row = wait_for(browser, lambda d: class_row(d, "seven"))
    assert "yes" in row[0].text
    assert served["version"] in browser.find_element("id", "model-line").text
    assert console_problems(browser) == []
    screenshot(browser, "enrol")

    browser.find_element("id", "enrol-undo").click()
    wait_for(browser, lambda d: result.text.startswith("Removed “seven”"))
    after = httpx.get(f"{loop_service.url}/v1/model").json()
    assert "seven" not in after["class_names"]
    assert f"model version {after['version']} (was {served['version']})" in result.text
    wait_for(browser, lambda d: "after the removal" in d.find_element("id", "enrol-check").text)
    check = browser.find_element("css selector", "#enrol-check > li")
    assert check.find_element("css selector", ".label").text != "seven"


def class_row(driver, name: str) -> list:
    """The rows of the Enrol view's class table that name ``name``."""
    return [
        row
        for row in driver.find_elements("css selector", "#classes-body tr")
        if row.find_element("css selector", ".class-name").text == name
    ]


def test_enrol_from_image_files_and_remove_it_from_the_class_table(browser, loop_service, files):
    sixes = [(f"six_{i}.png", data) for i, (data, _) in enumerate(mnist_digits([6], 10))]
    open_page(browser, loop_service.url, "enrol")
    use_token(browser, TOKEN)
    pick(browser, "enrol-files", files(sixes))
    browser.find_element("id", "enrol-name").send_keys("six")
    browser.find_element("id", "enrol-submit").click()
    result = browser.find_element("id", "enrol-result")
    wait_for(browser, lambda d: result.text.startswith("Enrolled “six” from 10 examples"))
    check = result_cards(browser, 1, "enrol-check")[0]
    name, data = sixes[0]
    assert check.find_element("css selector", "h3").text.endswith(name)
    card_shows(check, api_answer(loop_service.url, name, data)["predictions"][0])
    row = wait_for(browser, lambda d: class_row(d, "six"))[0]
    row.find_element("css selector", "button").click()
    wait_for(browser, lambda d: result.text.startswith("Removed “six”"))
    wait_for(browser, lambda d: not class_row(d, "six"))
    assert "six" not in httpx.get(f"{loop_service.url}/v1/model").json()["class_names"]
    assert console_problems(browser) == []
