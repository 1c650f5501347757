"""The second factor's enrolment in real Chromium: an auditor's first login shows a QR code, the
app's code turns it on, the recovery codes are shown once, and the next login needs a code.

Screenshot of the enrolment page: test-artifacts/totp-enrol.png.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from vre import totp

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture(scope="module")
def hub(make_hub):
    return make_hub("totp-browser", VRE_TOTP_ROLES="admin auditor")


def sign_in(page, hub, user: str, code: str = "") -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.passwords[user])
    page.fill("#otp_input", code)
    page.click("#login_submit")


def test_enrolment_with_a_qr_code_then_login_with_a_code(hub, browser_page):
    page = browser_page
    sign_in(page, hub, "auditor")
    qr = page.locator("#totp-qr svg")
    expect(qr).to_be_visible()
    box = qr.bounding_box()
    assert box["width"] > 100 and box["height"] > 100  # big enough for a phone's camera
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "totp-enrol.png"), full_page=True)
    secret = page.locator("#totp-secret").inner_text().strip()
    page.fill("#totp_code", "000000" if totp.code_at(secret, int(time.time() // 30)) != "000000" else "111111")
    page.click("#totp_submit")
    expect(page.locator("#totp-error")).to_contain_text("does not match")
    page.fill("#totp_code", totp.code_at(secret, int(time.time() // 30)))
    page.click("#totp_submit")
    codes = page.locator("#recovery-codes").inner_text().split()
    assert len(codes) == 10 and all(re.fullmatch(r"[a-z2-7]{5}-[a-z2-7]{5}", c) for c in codes)
    page.click("#continue-login")
    expect(page).to_have_url(re.compile(r"/hub/login"))
    sign_in(page, hub, "auditor")  # no code: refused
    expect(page.locator(".login_error")).to_be_visible()
    step = int(time.time() // 30)
    while int(time.time() // 30) == step:  # the enrolment used this step's code: a code is accepted once
        time.sleep(0.5)
    sign_in(page, hub, "auditor", totp.code_at(secret, step + 1))
    expect(page).to_have_url(re.compile(r"/hub/home"))
