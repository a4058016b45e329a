"""The README's screenshot: serve an index, upload a query in headless Chromium, save the page.

    .venv/bin/python bench/app_screenshot.py --index indexes/cub100-test --query path/to/bird.jpg --out docs/app.png
    .venv/bin/python bench/app_screenshot.py --index indexes/cub100 --query composite.jpg --box 200,100,400,300 \
        --out docs/app.png --why-out docs/app-why.png --mark right   # a region searched, a result opened
                                                          # with its heat maps, then marked right on its tile

Needs Debian's chromium and chromium-driver and the dev extra (selenium).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from metrix.app.server import Server
    from metrix.index.live import LiveIndex

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--query", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--box", help="type this region (x0,y0,x1,y1) into the page and search it")
    parser.add_argument("--why-out", type=Path, help="also save the opened result with its heat maps here")
    parser.add_argument("--mark", choices=("right", "wrong"), help="then mark the opened result so")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(LiveIndex(args.index), port=port, default_k=args.k).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1300,1050",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(args.query.resolve()))
        wait.until(lambda b: "most similar" in b.find_element(By.ID, "status").text)
        if args.box:
            from selenium.webdriver.common.keys import Keys

            browser.find_element(By.CSS_SELECTOR, "#box textarea, #box input").send_keys(args.box + Keys.ENTER)
            wait.until(lambda b: "region" in b.find_element(By.ID, "status").text)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results img")) >= args.k)
        browser.find_elements(By.CSS_SELECTOR, "#results .thumbnail-item")[1].click()
        wait.until(lambda b: "similarity:" in b.find_element(By.TAG_NAME, "body").text)
        if args.why_out:
            wait.until(
                lambda b: b.execute_script(
                    "return [...document.querySelectorAll('#why img')].filter(i => i.complete && i.naturalWidth).length === 2"
                )
            )
            browser.execute_script("document.getElementById('selected').scrollIntoView()")
            browser.save_screenshot(str(args.why_out))
        if args.mark:  # mark the opened result on its tile: the search runs again with the mark
            browser.find_element(By.ID, f"mark-{args.mark}").click()
            wait.until(lambda b: "feedback" in b.find_element(By.ID, "status").text)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results img")) >= args.k)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(args.out))
    finally:
        browser.quit()
        server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
