#!/usr/bin/env python3
"""Drives Debian's Chromium, headless through chromedriver and selenium: loads mqtt_page.html
(beside this script), where stomp.js on one WebSocket URL and mqtt.js on another exchange
messages both ways; prints what the page reports as one JSON line.

Usage: meet.py STOMP_WS_URL MQTT_WS_URL COUNT MQTT_VERSION(4|5)
"""

import json
import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

LIMIT_MS = 45000


def main():
    stomp_url, mqtt_url, count, version = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    page = "file://" + os.path.join(os.path.dirname(os.path.abspath(__file__)), "mqtt_page.html")
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
        "--user-data-dir=" + tempfile.mkdtemp(prefix="meshmq-chromium-"),
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_script_timeout(LIMIT_MS / 1000 + 15)
        driver.get(page)
        result = driver.execute_async_script(
            "meet(arguments[0], arguments[1], arguments[2], arguments[3], arguments[4], arguments[5]);",
            stomp_url, mqtt_url, count, version, LIMIT_MS,
        )
    finally:
        driver.quit()
    print(json.dumps(result))


main()
