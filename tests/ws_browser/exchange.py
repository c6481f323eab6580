#!/usr/bin/env python3
"""Loads page.html in headless Chromium (see browser.py): its stomp.js connects a consumer to
one WebSocket URL and a producer to another and moves messages between them; prints what the
page reports as one JSON line.

Usage: exchange.py PRODUCER_WS_URL CONSUMER_WS_URL DESTINATION COUNT
"""

import sys

from browser import run

producer, consumer, destination, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
run("page.html", "exchange", producer, consumer, destination, count)
