"""The Gradio app served for real on a free localhost port: queried through gradio_client, by 20
clients at once, by raw HTTP for file access, and in headless Chromium (Selenium) like a user."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from metrix.index.build import build_index
from metrix.index.store import open_with_model

from .pictures import assert_apart, blocks
from .training_helpers import metrix_cli

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
gradio_client = pytest.importorskip("gradio_client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("app") / "gallery"
    for label in ("ants", "bees"):
        for i in range(10):
            (root / label).mkdir(parents=True, exist_ok=True)
            blocks(500 + 10 * len(label) * i + (label == "bees"), (72, 56)).save(root / label / f"{i:02d}.png")
    assert_apart(tiny_model, root, [p.relative_to(root) for p in root.rglob("*.png")])  # the tests search by self-retrieval
    index_dir = root.parent / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    return root, index_dir


@pytest.fixture(scope="module")
def served(gallery_index):
    from metrix.app.ui import build_app, launch

    root, index_dir = gallery_index
    app = build_app(*open_with_model(index_dir))
    port = free_port()
    launch(app, root, port=port, block=False)
    yield f"http://127.0.0.1:{port}/", root, index_dir
    app.close()


def _client(url):
    return gradio_client.Client(url, verbose=False)


def test_upload_returns_the_gallery_image_first(served):
    url, root, _ = served
    items, status = _client(url).predict(gradio_client.handle_file(str(root / "bees" / "03.png")), 5, api_name="/search")
    assert len(items) == 5 and "5 most similar of 20" in status
    captions = [item["caption"] for item in items]
    assert captions[0].endswith("· bees · bees/03.png") and captions[0].startswith("1.000")
    scores = [float(c.split(" · ")[0]) for c in captions]
    assert scores == sorted(scores, reverse=True)


def test_non_image_upload_gets_a_friendly_message(served, tmp_path):
    url, _, _ = served
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a picture")
    items, status = _client(url).predict(gradio_client.handle_file(str(fake)), 5, api_name="/search")
    assert items == [] and status.startswith("That upload cannot be searched: not an image")
    assert "Traceback" not in status


def test_oversized_upload_is_refused(served, tmp_path):
    url, _, _ = served
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))
    client = _client(url)
    with pytest.raises(Exception, match="(?i)too large|413|exceeds"):
        client.predict(gradio_client.handle_file(str(big)), 5, api_name="/search")


def test_only_gallery_files_are_served(served):
    url, root, index_dir = served

    def status(path):
        try:
            return urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10).status
        except urllib.error.HTTPError as error:
            return error.code

    assert status(root / "ants" / "01.png") == 200
    for outside in ("/etc/passwd", index_dir / "CURRENT", root.parent / "index" / "report.json", root / ".." / "index" / "CURRENT"):
        assert status(outside) in (403, 404), outside


def test_twenty_concurrent_queries_all_succeed(served):
    url, root, _ = served
    paths = [root / label / f"{i:02d}.png" for label in ("ants", "bees") for i in range(10)]

    def query(path):
        items, _ = _client(url).predict(gradio_client.handle_file(str(path)), 3, api_name="/search")
        return items[0]["caption"].split(" · ")[-1]

    with ThreadPoolExecutor(20) as pool:
        tops = list(pool.map(query, paths))
    assert tops == [str(p.relative_to(root)) for p in paths]


def test_serving_path_imports_no_torch(gallery_index):
    _, index_dir = gallery_index
    code = ("import sys; from metrix.app.ui import build_app; from metrix.index.store import open_with_model; "
            f"build_app(*open_with_model({str(index_dir)!r})); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_metrix_serve_command(gallery_index):
    root, index_dir = gallery_index
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "metrix", "serve", "--index", str(index_dir), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < 60:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read()
                time.sleep(0.3)
        print(f"metrix serve answered after {time.perf_counter() - started:.1f} s")
        items, _ = _client(f"http://127.0.0.1:{port}/").predict(
            gradio_client.handle_file(str(root / "ants" / "07.png")), 2, api_name="/search")
        assert items[0]["caption"].endswith("ants/07.png")
    finally:
        process.terminate()
        process.wait(10)
    failed = metrix_cli("serve", "--index", root, check=False)
    assert failed.returncode == 2 and "no index here" in failed.stderr


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium and chromium-driver (.ci/run does)")
        pytest.skip("no chromium + chromedriver (Debian packages chromium, chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_browser_upload_click_and_search_again(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, root, _ = served
    browser = _browser()
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        assert "20 images" in browser.find_element(By.TAG_NAME, "body").text
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(root / "ants" / "04.png"))
        wait.until(lambda b: "most similar of 20" in b.find_element(By.ID, "status").text)
        captions = wait.until(lambda b: [c.text for c in b.find_elements(By.CSS_SELECTOR, "#results .caption-label")
                                         if c.text] or None)
        assert captions[0].endswith("ants/04.png"), captions
        browser.save_screenshot(str(tmp_path / "results.png"))
        assert (tmp_path / "results.png").stat().st_size > 10_000

        thumbnails = browser.find_elements(By.CSS_SELECTOR, "#results button.thumbnail-item, #results .thumbnail-item")
        thumbnails[1].click()
        second = captions[1].split(" · ")[-1]
        wait.until(lambda b: second in b.find_element(By.TAG_NAME, "body").text.split("Click a result")[0]
                   and "similarity:" in b.find_element(By.TAG_NAME, "body").text)
        browser.find_element(By.XPATH, "//button[contains(., 'Search with this image')]").click()
        wait.until(lambda b: [c.text for c in b.find_elements(By.CSS_SELECTOR, "#results .caption-label")][:1]
                   and b.find_elements(By.CSS_SELECTOR, "#results .caption-label")[0].text.endswith(second))
        screenshot = os.environ.get("METRIX_SCREENSHOT")
        if screenshot:  # how docs/app.png is made: METRIX_SCREENSHOT=docs/app.png pytest -k browser
            browser.save_screenshot(screenshot)
    finally:
        browser.quit()
