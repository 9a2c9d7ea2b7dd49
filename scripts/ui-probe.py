#!/usr/bin/env python3
"""Loads a page of the web UI in headless Chromium (Debian's chromium + chromedriver, driven
over WebDriver with the standard library only) and waits up to 30 s until the page's text holds
every WANT. Exit 0 when it does, 1 (with what was missing and the page's start) when not.
With UI_SHOT=path, saves a screenshot there. Used by scripts/lab-test.sh.

    scripts/ui-probe.py URL WANT...
"""
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

url, want = sys.argv[1], sys.argv[2:]
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
sock.close()
driver = subprocess.Popen(["chromedriver", f"--port={port}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, method=method, data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)["value"]


try:
    for _ in range(50):
        try:
            call("GET", "/status")
            break
        except OSError:
            time.sleep(0.2)
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,800",
            "--user-data-dir=" + tempfile.mkdtemp()]
    caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": args}}}}
    session = call("POST", "/session", caps)["sessionId"]
    try:
        call("POST", f"/session/{session}/url", {"url": url})
        text = ""
        deadline = time.time() + 30
        while time.time() < deadline:
            text = call("POST", f"/session/{session}/execute/sync",
                        {"script": "return document.body.innerText", "args": []})
            if all(w in text for w in want):
                break
            time.sleep(0.5)
        if os.environ.get("UI_SHOT"):
            with open(os.environ["UI_SHOT"], "wb") as f:
                f.write(base64.b64decode(call("GET", f"/session/{session}/screenshot")))
        missing = [w for w in want if w not in text]
        if missing:
            print("missing:", missing, "page:", text[:300].replace("\n", " | "))
            sys.exit(1)
    finally:
        call("DELETE", f"/session/{session}")
finally:
    driver.kill()
