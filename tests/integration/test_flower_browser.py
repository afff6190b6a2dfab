"""Flower page by page in headless Chromium: an operator signs in and reads the dashboard,
the task list, a task, its worker and the broker, and no page shows a body, a Bcc address
or a password.

The browser is Debian's (scripts/system-deps.sh installs it) and Selenium is pointed at its
driver, so Selenium Manager, which would download one, never runs.
"""

import os
import socket
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip(
    "selenium", minversion="4.20", reason="selenium is in the dev extra: run make install"
)

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.wait import WebDriverWait

from emailq.producer import enqueue_email
from tests.integration.test_flower import AUTH, _get, _start
from tests.integration.test_tools import _wait_listening
from tests.support import free_port, smtp

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLOWER_PASSWORD = "pw-123"  # AUTH's
BODY = "one-time code 991122"
BCC = "hidden@example.com"
# The body, the Bcc address, the SMTP password, Flower's, and the link-signing key
# (tests/conftest.py sets it for every process the suite starts).
SECRETS = ("991122", BCC, smtp.PASSWORD, FLOWER_PASSWORD, os.environ["SECRET_KEY"])
WAIT_S = 30  # Flower learns of workers and tasks from events, seconds behind on 2 busy cores

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"{CHROMIUM} or {CHROMEDRIVER} is missing: run make install "
    "(scripts/system-deps.sh installs Debian's chromium and chromium-driver)",
)


@pytest.fixture
def flower(session_redis, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": session_redis.url,
           "FLOWER_BASIC_AUTH": f"admin:{FLOWER_PASSWORD}"}  # fmt: skip
    with (tmp_path / "flower.log").open("w") as log:
        process = _start(port, env, tmp_path, log=log)
        try:
            _wait_listening(port, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(20)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    # Belt and braces: a driver path in the Service already skips Selenium Manager.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1024"):  # fmt: skip
        options.add_argument(argument)  # --no-sandbox: Chromium's sandbox refuses root
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


def _leaks(browser: WebDriver) -> list[str]:
    page = browser.page_source
    return [secret for secret in SECRETS if secret in page]


def _clicked(by: str, value: str) -> Callable[[WebDriver], bool]:
    """A condition: the element clicked, found again when a redraw has replaced it."""

    def click(browser: WebDriver) -> bool:
        browser.find_element(by, value).click()
        return True

    return click


def _task_row(task_id: str) -> Callable[[WebDriver], WebElement | bool]:
    """A condition: the task's row in /tasks, once Flower has its success."""
    link = (By.CSS_SELECTOR, f'#tasks-table a[title="{task_id}"]')  # the task id column

    def row(browser: WebDriver) -> WebElement | bool:
        if browser.execute_script("return jQuery.active"):
            return False  # a reload is on its way: its redraw would replace the rows
        for found in browser.find_elements(*link):
            row = found.find_element(By.XPATH, "./ancestor::tr")
            if "SUCCESS" in row.text:
                return row
        # The list does not refresh itself: ask it again until Flower has the event.
        browser.execute_script("$('#tasks-table').DataTable().ajax.reload(null, false)")
        return False

    return row


def _reloaded_until(by: str, value: str) -> Callable[[WebDriver], WebElement | bool]:
    """A condition: the element, reloading the page until it shows."""

    def element(browser: WebDriver) -> WebElement | bool:
        found = browser.find_elements(by, value)
        if not found:
            browser.refresh()
        return found[0] if found else False

    return element


def test_an_operator_signs_in_and_reads_every_flower_page_without_a_secret(
    flower, browser, smtp_server, start_worker
):
    # Given a worker watched by Flower, and a job with a secret body and a Bcc recipient
    worker = start_worker(smtp_server)
    worker_name = worker.name.replace("%h", socket.gethostname())
    result = enqueue_email.delay(to="ann@example.com", bcc=[BCC], subject="Your code", text=BODY)
    result.get(timeout=30)
    # The workers table redraws itself every second: an element found may be replaced.
    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    slow_wait = WebDriverWait(  # for conditions that reload the page
        browser, WAIT_S, poll_frequency=1, ignored_exceptions=[StaleElementReferenceException]
    )

    # When Flower is opened without credentials, Then it is refused: a 401, on which headless
    # Chrome, with no password prompt to show, draws a blank page
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _get(f"{flower}/", auth=False)
    assert anonymous.value.code == 401
    browser.get(f"{flower}/")
    assert not browser.find_elements(By.ID, "workers-table")

    # When it signs in: with no prompt to fill, the Authorization header goes on every
    # request the page makes, its API calls included
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": AUTH}})

    # Then the dashboard lists the worker, once Flower has heard from it. The name is drawn
    # in two lines (prefix, suffix); its link carries it whole.
    browser.get(f"{flower}/")
    worker_link = (By.CSS_SELECTOR, f'#workers-table a.worker-name-link[title="{worker_name}"]')
    wait.until(EC.presence_of_element_located(worker_link))
    assert _leaks(browser) == []

    # And its link opens the worker's page, whose configuration tab is in the page too
    wait.until(_clicked(*worker_link))
    wait.until(EC.url_contains("/worker/"))
    heading = slow_wait.until(_reloaded_until(By.ID, "workername"))  # 404 while inspect is late
    assert heading.text == worker_name
    assert _leaks(browser) == []

    # And the task list shows the job by name and state (Flower's default columns leave out
    # the arguments)
    browser.find_element(By.LINK_TEXT, "Tasks").click()
    row = slow_wait.until(_task_row(result.id))
    assert "emailq.send" in row.text
    assert _leaks(browser) == []

    # And the task's link opens its page: the subject and the result, without the secrets
    wait.until(_clicked(By.CSS_SELECTOR, f'#tasks-table a[title="{result.id}"]'))
    page = wait.until(EC.presence_of_element_located((By.ID, "task-page"))).text
    assert "Your code" in page and "SUCCESS" in page
    assert _leaks(browser) == []

    # When jobs wait with no worker to take them
    worker.stop()
    for n in range(2):
        enqueue_email.delay(to="ann@example.com", subject=f"Digest {n}", text="x")
    enqueue_email.delay(to="oncall@example.com", subject="Down", text="!", priority="high")

    # Then the broker page lists both queues with their depth
    browser.find_element(By.LINK_TEXT, "Broker").click()
    table = wait.until(EC.presence_of_element_located((By.ID, "queue-table")))
    depths = {
        queue: table.find_element(By.CSS_SELECTOR, f"tr#{queue} td:nth-child(2)").text
        for queue in ("high", "normal")
    }
    assert depths == {"high": "1", "normal": "2"}
    assert _leaks(browser) == []
