"""Helpers for browser tests that drive a real JupyterLab page (Playwright)."""

from __future__ import annotations


def dismiss_toasts(page, wait_ms: int = 0, click_ms: int = 3_000) -> None:
    """Answer Lab's "get Jupyter news?" question (shown once per fresh home, a few seconds after
    Lab starts) and close any other notification, for clean screenshots. ``wait_ms``: how long to
    wait for a first toast (0: only close those already shown)."""
    from playwright.sync_api import expect

    toasts = page.locator(".Toastify__toast")
    if wait_ms:
        try:
            expect(toasts.first).to_be_visible(timeout=wait_ms)
        except AssertionError:
            return
    for toast in toasts.all():
        try:
            no = toast.get_by_role("button", name="No", exact=True)
            if no.count():
                no.click(timeout=click_ms)
            else:
                toast.locator(".jp-Notification-Toast-Close").click(timeout=click_ms)
        except Exception:  # a toast that closes itself meanwhile is fine
            pass
