"""The connect flow as a person walks it: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium by path: nothing is downloaded) against `calsync serve`
and the consumer in their own processes and the sandbox's consent pages.

Screenshots of every page land in test-artifacts/browser/ (printed at the end of the run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.environment import ADMIN_TOKEN, ROOT, Env, wait_until
from tests.plugins.events import booking_event

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
ACTIVITY = "act_pages"
BOOKINGS = 30

os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager never downloads anything

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # pragma: no cover - the dev extra installs it
    webdriver = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if webdriver is None:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"no headless browser: {CHROMIUM} and {CHROMEDRIVER} are missing "
            "(`make test` installs Debian's chromium and chromium-driver as root; "
            "otherwise: sudo apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=960,1000",
        "--lang=en-US",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    # The sandbox's certificate comes from a throwaway CA the browser does not know.
    options.accept_insecure_certs = True
    try:
        driver = webdriver.Chrome(
            options=options, service=Service(executable_path=str(CHROMEDRIVER))
        )
    except WebDriverException as exc:
        pytest.skip(f"chromium did not start: {exc.msg}")
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    yield driver
    driver.quit()


class Person:
    """What a person does in the browser, with a screenshot of each page they see."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base
        self.shots = 0

    def wait(self, condition: Callable[[WebDriver], Any], what: str, timeout_s: float = 30) -> Any:
        """Until `condition` holds; pages come and go meanwhile."""

        def settled(driver: WebDriver) -> Any:
            try:
                return condition(driver)
            except WebDriverException as exc:
                # A page replacing itself (the catch-up page reloads) can leave Chrome asked
                # about a node of the old document: StaleElementReference in most versions,
                # this inspector error in others. Ask again on the new page.
                if "does not belong to the document" in str(exc.msg):
                    return False
                raise

        try:
            return WebDriverWait(
                self.driver,
                timeout_s,
                poll_frequency=0.1,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
            ).until(settled)
        except TimeoutException:
            raise AssertionError(
                f"timed out waiting for {what}; at {self.driver.current_url}: {self.text()[:600]}"
            ) from None

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def heading(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "h1").text)

    def shot(self, name: str, width: int = 960) -> Path:
        """A screenshot of the whole page."""
        self.shots += 1
        self.driver.set_window_size(width, 1000)
        height = self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
        self.driver.set_window_size(width, min(max(int(height) + 140, 600), 4000))
        path = ARTIFACTS / f"{self.shots:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(960, 1000)
        return path

    def click(self, by: str, value: str) -> None:
        self.driver.find_element(by, value).click()

    def button(self, label: str, within: Any = None) -> Any:
        scope = within or self.driver
        return next(
            b
            for b in scope.find_elements(By.CSS_SELECTOR, "button, a.button")
            if b.text.strip() == label
        )

    def consent(self, account: str, first_offered: bool = False) -> None:
        """Google's pages: choose the account, then Allow."""
        self.wait(lambda d: "Choose an account" in self.heading(), "Google's account chooser")
        accounts = self.driver.find_elements(By.CSS_SELECTOR, "a.account")
        if first_offered:
            assert accounts[0].text == account  # login_hint: offered first
        self.shot("google-account-chooser")
        next(a for a in accounts if a.text == account).click()
        self.wait(
            lambda d: "wants to access your Google Account" in self.heading(),
            "Google's consent screen",
        )
        self.shot("google-consent")
        self.click(By.ID, "allow")

    def card(self, link_id: str) -> Any:
        return self.driver.find_element(By.ID, f"link-{link_id}")

    def state_of(self, link_id: str) -> str:
        return str(
            self.card(link_id).find_element(By.CSS_SELECTOR, ".badge").get_attribute("data-state")
        )


async def test_a_person_connects_chooses_reconnects_and_disconnects(
    env: Env, browser: WebDriver, tmp_path: Path
) -> None:
    owner, _ = env.account(
        "owner",
        calendars=[
            {"id": "owner-primary", "summary": "Owner", "primary": True},
            {"id": "owner-bookings", "summary": "Bookings"},
            {"id": "owner-holidays", "summary": "Holidays", "access_role": "reader"},
        ],
    )
    consumer = env.start_process(tmp_path / "consumer.log")
    try:
        # Bookings exist before the calendar is connected: choosing it backfills them.
        for n in range(BOOKINGS):
            await env.publish(
                booking_event(f"bk_{n:02d}", 1, activity_id=ACTIVITY, customer_name=f"Customer {n}")
            )
        await wait_until(
            lambda: env.query("SELECT count(*) AS n FROM bookings")[0]["n"] == BOOKINGS,
            what="the bookings recorded",
        )
        async with env.serve(tmp_path / "serve.log") as base:
            await walk(env, Person(browser, base), owner)
    finally:
        consumer.terminate()
        consumer.wait(30)
    print(f"\nscreenshots: {ARTIFACTS}")


async def walk(env: Env, person: Person, owner: str) -> None:
    driver = person.driver
    links_url = f"{person.base}/activities/{ACTIVITY}/links"

    # --- sign in: the links page asks for the admin credential ----------------------------
    driver.get(links_url)
    assert person.heading() == "Sign in"
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert driver.find_element(By.CSS_SELECTOR, "label[for=admin-token]").text == "Admin token"
    person.shot("sign-in")
    driver.find_element(By.ID, "admin-token").send_keys("not-the-token")
    person.button("Sign in").click()
    person.wait(lambda d: "That is not the admin token." in person.text(), "a refusal")
    driver.find_element(By.ID, "admin-token").send_keys(ADMIN_TOKEN)
    person.button("Sign in").click()
    person.wait(lambda d: d.current_url == links_url, "the links page")
    session = next(c for c in driver.get_cookies() if c["name"] == "calsync_session")
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
    assert "No calendar is connected yet." in person.text()

    # --- connect: Google's consent, then the calendar choice -------------------------------
    person.button("Connect Google Calendar").click()
    person.consent(owner)
    person.wait(lambda d: person.heading() == "Choose a calendar", "the calendar choice")
    assert driver.current_url.startswith(f"{person.base}/oauth/callback?")
    pending = env.query("SELECT id, state FROM calendar_links")
    assert [r["state"] for r in pending] == ["pending"]
    link_id = pending[0]["id"]
    choices = driver.find_elements(By.CSS_SELECTOR, ".choice")
    assert [c.find_element(By.CSS_SELECTOR, ".name").text for c in choices] == [
        "Owner",
        "Bookings",
        "Holidays",
    ]
    assert "Primary" in choices[0].text and "Primary" not in choices[1].text
    holidays = driver.find_element(By.CSS_SELECTOR, "input[value=owner-holidays]")
    assert holidays.get_attribute("disabled") is not None
    why = driver.find_element(By.ID, str(holidays.get_attribute("aria-describedby")))
    assert "Read-only" in why.text and "reader" in why.text
    holidays_label = driver.find_element(By.CSS_SELECTOR, "label[for=cal-3]")
    holidays_label.click()  # a disabled choice cannot be taken
    assert not holidays.is_selected()
    person.shot("choose-a-calendar")
    # Even forced (the attribute removed by hand), the server refuses it and says why.
    driver.execute_script("arguments[0].disabled = false; arguments[0].checked = true;", holidays)
    person.button("Save").click()
    person.wait(lambda d: "not writable" in person.text(), "the refusal")
    assert driver.find_element(By.CSS_SELECTOR, "[role=alert]").text.startswith(
        "Calendar 'Holidays' (owner-holidays) is not writable"
    )
    assert env.query("SELECT state FROM calendar_links")[0]["state"] == "pending"
    person.shot("read-only-refused")

    # --- choose Bookings: the backfill's progress until it ends ----------------------------
    driver.find_element(By.CSS_SELECTOR, "label[for=cal-2]").click()
    person.button("Save").click()
    person.wait(lambda d: "/backfills/" in d.current_url, "the progress page")
    assert "go to Bookings of " + owner in person.text().replace("\n", " ")
    # The page follows the backfill as it goes (polling, in place): count, rate, end.
    person.wait(
        lambda d: "per second" in person.text() or "Done" in person.text(), "progress with a rate"
    )
    person.shot("backfill-progress")
    person.wait(lambda d: person.heading() == "Calendar chosen", "the backfill to end", 60)
    assert f"Done: {BOOKINGS} bookings" in person.text()
    assert f"{BOOKINGS} applied" in person.text()
    person.shot("backfill-done")
    assert len(env.events(owner, "owner-bookings")) == BOOKINGS

    # --- the links page: active, with what it did ---------------------------------------
    driver.find_element(By.LINK_TEXT, "See the links page").click()
    person.wait(lambda d: d.current_url.startswith(links_url), "the links page")
    assert person.state_of(link_id) == "active"
    card = person.card(link_id)
    assert "Bookings (owner-bookings)" in card.text
    assert card.find_element(By.CSS_SELECTOR, ".events-synced").text == str(BOOKINGS)
    assert "applied" in card.text and "backfill" in card.text
    person.shot("links-active")

    # --- Google access revoked: the page shows reauth_required, Reconnect ----------------
    env.sandbox.revoke(owner)
    await env.publish(booking_event("bk_late", 1, activity_id=ACTIVITY))
    await wait_until(
        lambda: (
            env.query("SELECT state FROM calendar_links WHERE id = %s", link_id)[0]["state"]
            == "reauth_required"
        ),
        what="reauth_required",
    )
    driver.refresh()
    assert person.state_of(link_id) == "reauth_required"
    card = person.card(link_id)
    assert "Reconnect needed" in card.text and "invalid_grant" in card.text
    person.shot("links-reauth-required")
    person.button("Reconnect", card).click()
    person.consent(owner, first_offered=True)
    person.wait(lambda d: person.heading() == "Reconnected", "the catch-up to end", 60)
    assert "Done: 1 booking" in person.text()  # the booking that arrived meanwhile
    person.shot("reconnected")
    driver.find_element(By.LINK_TEXT, "See the links page").click()
    person.wait(lambda d: d.current_url.startswith(links_url), "the links page")
    assert person.state_of(link_id) == "active"
    assert len(env.events(owner, "owner-bookings")) == BOOKINGS + 1

    # --- a phone-sized screen --------------------------------------------------------------
    person.shot("links-on-a-phone", width=390)

    # --- disconnect, removing the events: a confirmation first --------------------------
    person.button("Disconnect…", person.card(link_id)).click()
    person.wait(lambda d: person.heading() == f"Disconnect {owner}?", "the confirmation")
    assert driver.find_element(By.ID, "events-keep").is_selected()  # the safe default
    person.shot("disconnect-confirmation")
    driver.find_element(By.CSS_SELECTOR, "label[for=events-remove]").click()
    person.button("Disconnect").click()
    person.wait(lambda d: "is disconnected" in person.text(), "the disconnection", 60)
    assert f"{BOOKINGS + 1} events removed" in person.text()
    assert env.events(owner, "owner-bookings") == []
    assert env.query("SELECT state FROM calendar_links")[0]["state"] == "disconnected"
    person.shot("disconnected")
