#!/usr/bin/env python3
"""Drives Debian's Chromium, headless through chromedriver and selenium, at a meshmq member's
mesh view and reports what the page shows.

Usage: browse.py URL. The page is loaded once and never reloaded (it must refresh itself).
Each line on standard input is an expectation, a JSON object whose keys are among
"members" (member -> role shown), "connectors" ("member/connector" -> "up" or "down") and
"masters" (group -> the master it names); the script waits (at most "timeout" seconds, 60 by
default) until the page shows at least those values, then prints one JSON line:
{"ok": true|false, "seen": {...what the page showed last...}}. It exits at end of input.
"""

import json
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

# Everything the page shows that the expectations can name, read in one script run so that a
# redraw between two reads cannot mix two refreshes.
READ_PAGE = """
const pick = (sel, key, value) => Object.fromEntries(
  [...document.querySelectorAll(sel)].map((e) => [key(e), value(e)]));
return {
  members: pick("[data-member]", (e) => e.dataset.member, (e) => e.dataset.role),
  connectors: pick("[data-connector]",
    (e) => e.closest("[data-member]").dataset.member + "/" + e.dataset.connector,
    (e) => e.dataset.state),
  masters: pick("[data-group]", (e) => e.dataset.group, (e) => e.dataset.master),
  summary: (document.getElementById("summary") || {}).textContent || "",
};
"""


def matches(seen, want):
    for key in ("members", "connectors", "masters"):
        for name, value in want.get(key, {}).items():
            if seen.get(key, {}).get(name) != value:
                return False
    return True


def main():
    url = sys.argv[1]
    profile = tempfile.mkdtemp(prefix="meshmq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--user-data-dir=" + profile,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(executable_path="/usr/bin/chromedriver"), options=options
    )
    try:
        driver.get(url)
        for line in sys.stdin:
            if not line.strip():
                continue
            want = json.loads(line)
            deadline = time.monotonic() + want.get("timeout", 60)
            seen = {}
            while True:
                seen = driver.execute_script(READ_PAGE)
                if matches(seen, want) or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            print(json.dumps({"ok": matches(seen, want), "seen": seen}), flush=True)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
