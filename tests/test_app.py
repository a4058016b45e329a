"""The web page served for real on a free localhost port: queried through gradio_client, by 20
clients at once, and in headless Chromium (Selenium) like a user; `metrix serve` as a process."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from metrix.index.build import build_index

from .browser import headless_chromium as _browser
from .pictures import assert_apart
from .service_helpers import free_port, make_gallery, serve_process
from .training_helpers import metrix_cli

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("app") / "gallery"
    paths = make_gallery(root)
    assert_apart(tiny_model, root, [p.relative_to(root) for p in paths])  # the tests search by self-retrieval
    index_dir = root.parent / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    return root, index_dir


@pytest.fixture(scope="module")
def served(gallery_index):
    from metrix.app.server import Server
    from metrix.index.live import LiveIndex

    root, index_dir = gallery_index
    server = Server(LiveIndex(index_dir), port=free_port()).start()
    yield server.url, root, index_dir
    server.stop()


def _client(url):
    # download_files=False: result images are URLs of the API's image route, which gradio_client cannot
    # download (it fetches everything through Gradio's /file= route); programs use /api/search instead.
    return gradio_client.Client(url, verbose=False, download_files=False)


def test_upload_returns_the_gallery_image_first(served):
    url, root, _ = served
    items, status = _client(url).predict(
        gradio_client.handle_file(str(root / "bees" / "03.png")), 5, api_name="/search"
    )
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
    code = (
        "import sys; from metrix.app.server import make_app; from metrix.app.access import Access; "
        "from metrix.index.live import LiveIndex; "
        f"make_app(LiveIndex({str(index_dir)!r}), Access()); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_metrix_serve_command(gallery_index):
    root, index_dir = gallery_index
    with serve_process(index_dir) as (url, process):
        items, _ = _client(url).predict(gradio_client.handle_file(str(root / "ants" / "07.png")), 2, api_name="/search")
        assert items[0]["caption"].endswith("ants/07.png")
    failed = metrix_cli("serve", "--index", root, check=False)
    assert failed.returncode == 2 and "no index here" in failed.stderr


def test_serving_to_the_network_without_access_control_warns(gallery_index):
    _, index_dir = gallery_index
    for env, warned in (({}, True), ({"METRIX_API_TOKEN": "t" * 24}, False)):
        with serve_process(index_dir, "--host", "0.0.0.0", env=env) as (url, process):
            pass
        output = process.stdout.read()
        warnings = [line for line in output.splitlines() if line.startswith("warning: serving")]
        assert bool(warnings) == warned, output
        assert not warned or "no login or token" in warnings[0]
        assert ("with access control" in output) != warned, output


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
        captions = wait.until(
            lambda b: [c.text for c in b.find_elements(By.CSS_SELECTOR, "#results .caption-label") if c.text] or None
        )
        assert captions[0].endswith("ants/04.png"), captions
        # thumbnails come from the API's image route (not Gradio's cache) and really load
        wait.until(
            lambda b: b.execute_script(
                "const i = [...document.querySelectorAll('#results img')];"
                "return i.length >= 5 && i.every(x => x.complete && x.naturalWidth > 0 && x.src.includes('/api/images/'));"
            )
        )
        browser.save_screenshot(str(tmp_path / "results.png"))
        assert (tmp_path / "results.png").stat().st_size > 10_000

        thumbnails = browser.find_elements(By.CSS_SELECTOR, "#results button.thumbnail-item, #results .thumbnail-item")
        thumbnails[1].click()
        second = captions[1].split(" · ")[-1]
        wait.until(
            lambda b: (
                second in b.find_element(By.TAG_NAME, "body").text.split("Click a result")[0]
                and "similarity:" in b.find_element(By.TAG_NAME, "body").text
            )
        )
        wait.until(
            lambda b: b.execute_script(
                "const i = document.querySelector('#selected img'); return i && i.complete && i.naturalWidth > 0;"
            )
        )
        browser.find_element(By.XPATH, "//button[contains(., 'Search with this image')]").click()
        wait.until(
            lambda b: (
                [c.text for c in b.find_elements(By.CSS_SELECTOR, "#results .caption-label")][:1]
                and b.find_elements(By.CSS_SELECTOR, "#results .caption-label")[0].text.endswith(second)
            )
        )
        screenshot = os.environ.get("METRIX_SCREENSHOT")
        if screenshot:  # how docs/app.png is made: METRIX_SCREENSHOT=docs/app.png pytest -k browser
            browser.save_screenshot(screenshot)
    finally:
        browser.quit()
