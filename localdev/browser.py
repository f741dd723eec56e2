"""Headless Chromium from the distribution's packages, driven by Playwright (pinned in
requirements-dev.txt), for the report's browser test and its screenshot in docs/.

    .venv/bin/python -m localdev.browser --ensure                      # install Chromium when missing (root)
    .venv/bin/python -m localdev.browser report.html --screenshot docs/report.png

Playwright's own browser download cannot work on a machine without general internet, so
the browser is Debian's `chromium` (/usr/bin/chromium, or TXMETRICS_CHROMIUM), which
`ensure_chromium` installs with apt-get when it is missing and we are root. It is started
with the flags a closed network needs (no background connections to Google's services,
which would otherwise count as requests and hang) and a fresh profile every time.

`inspect_page` loads one HTML file and records everything a test must see: every request
the page makes (none is let through: each is aborted, so nothing leaves the machine even
if the page asks), console errors and uncaught exceptions, what the page says about its
charts and headline numbers (the data-* attributes the report writes), and optionally a
full-page screenshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_VARIABLE = "TXMETRICS_CHROMIUM"
DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
# The flags a closed network needs: without them Chromium keeps trying to reach Google's
# update, sync and safe-browsing services in the background.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
VIEWPORT_WIDTH = 1280
LOAD_TIMEOUT_MS = 30_000


class BrowserUnavailableError(RuntimeError):
    """Chromium is not installed and cannot be installed here; the message says how to."""


def find_chromium() -> Path | None:
    configured = os.environ.get(CHROMIUM_VARIABLE, "").strip()
    candidates = [Path(configured)] if configured else [DEFAULT_CHROMIUM]
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def ensure_chromium(*, install: bool = True) -> Path:
    """The Chromium executable; installs Debian's `chromium` with apt-get when it is missing
    and this process is root. Raises BrowserUnavailableError, saying what to do, otherwise."""
    found = find_chromium()
    if found is not None:
        return found
    how = "install it: sudo apt-get install chromium (Debian/Ubuntu), or set TXMETRICS_CHROMIUM to a Chromium binary"
    if os.environ.get(CHROMIUM_VARIABLE, "").strip():
        raise BrowserUnavailableError(f"{CHROMIUM_VARIABLE}={os.environ[CHROMIUM_VARIABLE]} is not an executable file; "
                                      f"{how}")
    apt = shutil.which("apt-get")
    if not install or apt is None or os.geteuid() != 0:
        reason = ("installing is off" if not install else "apt-get is not available" if apt is None
                  else "this is not root, so it cannot be installed here")
        raise BrowserUnavailableError(f"Chromium is not installed at {DEFAULT_CHROMIUM} and {reason}; {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("txmetrics: installing Debian's chromium for the report's browser test (apt-get, once)", file=sys.stderr)
    for command in ([apt, "update", "-qq"],
                    [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium", "fonts-dejavu-core"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise BrowserUnavailableError(f"`{' '.join(command[1:])}` failed ({done.returncode}): {tail}; {how}")
    found = find_chromium()
    if found is None:
        raise BrowserUnavailableError(f"apt-get installed chromium but {DEFAULT_CHROMIUM} is still missing; {how}")
    return found


@dataclass
class PageCheck:
    """What one page load showed."""

    requests: list[str] = field(default_factory=list)          # every URL the page asked for, past its own file
    console_errors: list[str] = field(default_factory=list)    # console.error and uncaught exceptions
    charts: list[dict[str, Any]] = field(default_factory=list)  # per chart: name, title, points, marks
    headlines: dict[str, str] = field(default_factory=dict)    # data-kpi -> data-value
    title: str = ""
    width: int = 0                                             # the document's scroll width, px
    text: str = ""                                             # the page's visible text


# Read in the page: the charts the report declares (data-chart, data-points) and the marks
# actually drawn in each (elements of class "mark": bars, lines, dots), the headline numbers.
_SURVEY = """() => ({
  charts: [...document.querySelectorAll('[data-chart]')].map(f => ({
    name: f.dataset.chart, title: (f.querySelector('figcaption, h3') || {}).textContent || '',
    points: Number(f.dataset.points), marks: f.querySelectorAll('svg .mark').length,
    svg: f.querySelectorAll('svg').length})),
  headlines: Object.fromEntries([...document.querySelectorAll('[data-kpi]')].map(e => [e.dataset.kpi, e.dataset.value])),
  width: document.documentElement.scrollWidth,
  text: document.body.innerText,
})"""


def inspect_page(path: Path, *, screenshot: Path | None = None, width: int = VIEWPORT_WIDTH) -> PageCheck:
    """Load `path` in headless Chromium (a fresh profile, every request aborted and
    recorded) and report what it showed; a full-page PNG to `screenshot` when given."""
    from playwright.sync_api import Request, Route, sync_playwright

    executable = ensure_chromium()
    page_url = path.resolve().as_uri()
    check = PageCheck()

    def on_request(request: Request) -> None:
        if request.url != page_url:
            check.requests.append(request.url)

    def refuse(route: Route) -> None:
        if route.request.url == page_url:
            route.continue_()
        else:
            route.abort("blockedbyclient")

    with tempfile.TemporaryDirectory(prefix="txmetrics-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(executable), headless=True, args=list(CHROMIUM_FLAGS),
            viewport={"width": width, "height": 900}, service_workers="block")
        try:
            page = context.new_page()
            page.on("request", on_request)
            page.on("console", lambda m: check.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: check.console_errors.append(f"uncaught: {e}"))
            context.route("**/*", refuse)        # the page's own file only: nothing leaves the machine
            page.goto(page_url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
            page.wait_for_load_state("networkidle", timeout=LOAD_TIMEOUT_MS)
            survey = page.evaluate(_SURVEY)
            check.charts, check.headlines = survey["charts"], survey["headlines"]
            check.width, check.text, check.title = int(survey["width"]), str(survey["text"]), page.title()
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Headless Chromium for the report (see the module docstring).")
    parser.add_argument("page", nargs="?", type=Path, help="an HTML file to load")
    parser.add_argument("--ensure", action="store_true", help="install Chromium when missing (apt-get, as root)")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="write a full-page screenshot")
    parser.add_argument("--width", type=int, default=VIEWPORT_WIDTH, help="viewport width, px")
    args = parser.parse_args(argv)
    if args.page is None and not args.ensure:
        parser.error("give a page, or --ensure")
    try:
        executable = ensure_chromium()
    except BrowserUnavailableError as exc:
        # `make test` goes on: the browser test then fails with this same message.
        print(f"txmetrics: {exc}", file=sys.stderr)
        return 0 if args.page is None else 2
    if args.page is None:
        print(f"chromium: {executable}", file=sys.stderr)
        return 0
    check = inspect_page(args.page, screenshot=args.screenshot, width=args.width)
    print(f"{args.page}: {len(check.charts)} chart(s), {len(check.requests)} request(s), "
          f"{len(check.console_errors)} console error(s), {check.width} px wide", file=sys.stderr)
    for problem in [*check.requests, *check.console_errors]:
        print(f"  {problem}", file=sys.stderr)
    return 1 if check.requests or check.console_errors else 0


if __name__ == "__main__":
    sys.exit(main())
