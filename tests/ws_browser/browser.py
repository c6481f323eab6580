"""Drives Debian's Chromium, headless through chromedriver and selenium: loads a page beside
this file, calls one of its functions (which calls back when done) with the given arguments
and the time limit, and prints what the page reports as one JSON line. The browser tests'
scripts (`exchange.py`, `meet.py`) are this with their page and function."""

import json
import os
import shutil
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

LIMIT_MS = 45000


def run(page, function, *args):
    url = "file://" + os.path.join(os.path.dirname(os.path.abspath(__file__)), page)
    profile = tempfile.mkdtemp(prefix="meshmq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--user-data-dir=" + profile,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_script_timeout(LIMIT_MS / 1000 + 15)
        driver.get(url)
        # The page's function takes the arguments, the time limit and the callback selenium
        # appends as the last argument of an async script.
        params = ", ".join(f"arguments[{i}]" for i in range(len(args) + 2))
        result = driver.execute_async_script(f"{function}({params});", *args, LIMIT_MS)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(result))
