#!/usr/bin/env python3
"""Loads mqtt_page.html in headless Chromium (see browser.py): stomp.js on one WebSocket URL
and mqtt.js on another exchange messages both ways; prints what the page reports as one JSON
line.

Usage: meet.py STOMP_WS_URL MQTT_WS_URL COUNT MQTT_VERSION(4|5)
"""

import sys

from browser import run

stomp_url, mqtt_url, count, version = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run("mqtt_page.html", "meet", stomp_url, mqtt_url, count, version)
