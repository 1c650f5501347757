"""Click-to-Lab in Chromium: from "Start session" on the home page to an idle kernel in a new notebook.

    sudo .venv/bin/python bench/click_to_lab.py [--n 10] [--project lung-screening] [--user alice]

One real hub (``vre up``, small demo, SQLite, 127.0.0.1) and Debian's Chromium (never a downloaded
one), headless, every request to a host other than the hub's aborted. Each of ``--n`` rounds, in a
fresh browser context (no cache, no cookies), as a researcher does:

1. ``form``      click "Start session" on the home page, until the spawn form is shown;
2. ``spawn``     submit it (the first profile), until the Lab's shell is on screen: the session's
                 start, the spawn-pending page, the OAuth round trips and the Lab page's load;
3. ``launcher``  until the launcher's Notebook card is shown (the Lab's extensions are loaded);
4. ``kernel``    click the card, until the status bar says the new notebook's kernel is idle.

The baseline, in the same run: the same steps 3-4 with the session already running (a fresh
context opens ``/user/<u>/<project>/lab`` directly: ``warm``), so the session's start shows apart
from the Lab's own load. The session is stopped through the REST API between rounds (not timed).
Prints p50/p95/min/max per phase and each phase's share of the total; asserts nothing on timings.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Hub  # noqa: E402
from hubclient import HubClient  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
NOT_LOCAL = re.compile(r"^(?:https?|wss?)://(?!(?:127\.0\.0\.1|localhost)(?::\d+)?(?:/|$))")
TIMEOUT_MS = 120_000


def new_page(browser, hub: Hub, user: str):
    """A fresh context logged in as ``user`` (the login form over HTTP, cookies handed over)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.route(NOT_LOCAL, lambda route: route.abort())
    client = HubClient(hub.url, user)
    client.login(hub.passwords[user])
    context.add_cookies([{"name": c.name, "value": c.value, "url": f"{hub.url}{c.path or '/'}"}
                         for c in client.http.cookies])
    return context, context.new_page()


def open_notebook(page, expect) -> dict[str, float]:
    """From a Lab page being loaded: the launcher, then a new notebook's kernel idle."""
    times = {}
    t = time.monotonic()
    card = page.locator('.jp-Launcher .jp-LauncherCard[data-category="Notebook"]').first
    expect(card).to_be_visible(timeout=TIMEOUT_MS)
    times["launcher"] = time.monotonic() - t
    t = time.monotonic()
    card.click()
    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"\| Idle"), timeout=TIMEOUT_MS)
    times["kernel"] = time.monotonic() - t
    return times


def cold_round(browser, expect, hub: Hub, user: str, project: str) -> dict[str, float]:
    context, page = new_page(browser, hub, user)
    try:
        page.goto(f"{hub.url}/hub/home")
        times = {}
        t = time.monotonic()
        page.locator(f"#project-{project} .start-server").click()
        form = page.locator("#spawn_form")
        expect(form).to_be_visible()
        times["form"] = time.monotonic() - t
        t = time.monotonic()
        form.locator('[type="submit"]').click()
        failed = page.get_by_text(re.compile(r"Spawn failed"))
        expect(page.locator("#jp-main-dock-panel").or_(failed).first).to_be_visible(timeout=TIMEOUT_MS)
        if failed.count():
            raise RuntimeError(failed.first.inner_text())
        times["spawn"] = time.monotonic() - t
        times.update(open_notebook(page, expect))
        return times
    finally:
        context.close()


def warm_round(browser, expect, hub: Hub, user: str, project: str) -> dict[str, float]:
    context, page = new_page(browser, hub, user)
    try:
        t = time.monotonic()
        page.goto(f"{hub.url}/user/{user}/{project}/lab")
        expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=TIMEOUT_MS)
        times = {"lab page": time.monotonic() - t}
        times.update(open_notebook(page, expect))
        return times
    finally:
        context.close()


def forget_layout(api: HubClient, project: str) -> None:
    """Delete the Lab's saved workspace, so the next Lab opens on the launcher again (it would
    restore the last round's notebook instead). Not timed."""
    import requests

    r = requests.delete(f"{api.server_url(project)}/lab/api/workspaces/default",
                        headers={"Authorization": f"token {api.token}"}, timeout=30)
    if r.status_code not in (204, 404):
        raise RuntimeError(f"could not reset the Lab's workspace: {r.status_code} {r.text[:200]}")


def table(title: str, rounds: list[dict[str, float]]) -> None:
    print(f"\n{title} ({len(rounds)} rounds)")
    totals = [sum(r.values()) for r in rounds]
    print(f"   {'phase':<10} {'p50 s':>7} {'p95 s':>7} {'min s':>7} {'max s':>7}  share of p50 total")
    for phase in rounds[0]:
        v = sorted(r[phase] for r in rounds)
        p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
        print(f"   {phase:<10} {statistics.median(v):7.2f} {p95:7.2f} {v[0]:7.2f} {v[-1]:7.2f}  "
              f"{100 * statistics.median(v) / statistics.median(totals):5.1f} %")
    print(f"   {'total':<10} {statistics.median(totals):7.2f} {sorted(totals)[-1]:>15.2f} (max)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10, help="rounds (default 10)")
    ap.add_argument("--project", default="lung-screening")
    ap.add_argument("--user", default="alice")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/click_to_lab.py needs root (the hub manages sandboxes)")
    if not Path(CHROMIUM).exists():
        sys.exit(f"Chromium is not installed at {CHROMIUM} (scripts/setup --test installs it)")
    from playwright.sync_api import expect, sync_playwright

    hub = Hub("bench-click", None)
    try:
        hub.start()
        api = hub.client(args.user)
        cold, warm = [], []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                cold_round(browser, expect, hub, args.user, args.project)  # warm-up, not counted
                forget_layout(api, args.project)
                api.stop(args.project)
                for i in range(args.n):
                    cold.append(cold_round(browser, expect, hub, args.user, args.project))
                    forget_layout(api, args.project)
                    warm.append(warm_round(browser, expect, hub, args.user, args.project))
                    forget_layout(api, args.project)
                    api.stop(args.project)
                    print(f"round {i + 1}/{args.n}: cold {sum(cold[-1].values()):.2f} s, "
                          f"warm {sum(warm[-1].values()):.2f} s", flush=True)
            finally:
                browser.close()
        table("click 'Start session' -> idle kernel in a new notebook", cold)
        table("baseline: the Lab of a running session -> idle kernel in a new notebook", warm)
        print(f"\nthe session's start (spawn - warm 'lab page', p50): "
              f"{statistics.median(r['spawn'] for r in cold) - statistics.median(r['lab page'] for r in warm):.2f} s")
    finally:
        hub.teardown()


if __name__ == "__main__":
    main()
