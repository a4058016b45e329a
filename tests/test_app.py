"""The web page served for real on a free localhost port: queried through gradio_client, by 20
clients at once, and in headless Chromium (Selenium) like a user; `metrix serve` as a process."""

import ast
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


def _client(url, **options):
    return gradio_client.Client(url, verbose=False, **options)


def _paths(answer: dict) -> list[str]:
    return [hit["gallery_path"] for hit in answer["results"]]


def test_upload_returns_the_gallery_image_first(served):
    url, root, _ = served
    answer = _client(url).predict(gradio_client.handle_file(str(root / "bees" / "03.png")), 5, api_name="/search")
    assert answer["k"] == 5 and answer["images"] == 20 and len(answer["results"]) == 5
    top = answer["results"][0]
    assert (top["rank"], top["gallery_path"], top["label"]) == (1, "bees/03.png", "bees") and top["score"] > 0.999
    scores = [hit["score"] for hit in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    assert top["url"].startswith(url) and f"/api/images/{top['id']}" in top["url"]


def test_the_pages_own_api_snippet_runs_verbatim(served, tmp_path):
    """The snippet "Use via API" shows, built from the same endpoint info the page renders it from,
    run in a fresh interpreter with the default client. The one change: the example image (a URL
    on github.com, unreachable here) is a gallery file."""
    url, root, _ = served
    info = _client(url).view_api(return_format="dict", print_info=False)
    assert list(info["named_endpoints"]) == ["/search"], info["named_endpoints"].keys()
    arguments = []
    for parameter in info["named_endpoints"]["/search"]["parameters"]:
        if parameter["python_type"]["type"] == "filepath":
            value = f"handle_file({str(root / 'ants' / '04.png')!r})"
        else:
            value = repr(
                parameter["parameter_default"] if parameter["parameter_has_default"] else parameter["example_input"]
            )
        arguments.append(f"\t{parameter['parameter_name']}={value},")
    snippet = "\n".join(
        [
            "from gradio_client import Client, handle_file",
            "",
            f'client = Client("{url}")',
            "result = client.predict(",
            *arguments,
            '\tapi_name="/search"',
            ")",
            "print(result)",
        ]
    )
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    answer = ast.literal_eval(ran.stdout.strip().splitlines()[-1])
    assert _paths(answer)[0] == "ants/04.png" and answer["k"] == 8 and len(answer["results"]) == 8


def test_non_image_upload_gets_a_one_line_error(served, tmp_path):
    url, _, _ = served
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a picture")
    with pytest.raises(gradio_client.exceptions.AppError) as raised:
        _client(url).predict(gradio_client.handle_file(str(fake)), 5, api_name="/search")
    message = str(raised.value)
    assert message.startswith("notes.jpg: not an image") and "\n" not in message and "Traceback" not in message


def test_bad_arguments_are_refused_in_one_line(served):
    url, root, _ = served
    query = gradio_client.handle_file(str(root / "bees" / "03.png"))
    for arguments, expected in (({"k": 0}, "k must be 1-50"), ({"box": "1,2,3"}, "box")):
        with pytest.raises(gradio_client.exceptions.AppError, match=expected):
            _client(url).predict(query, api_name="/search", **arguments)


def test_filters_and_feedback_through_the_client(served):
    url, root, _ = served
    query = gradio_client.handle_file(str(root / "bees" / "03.png"))
    only_ants = _client(url).predict(query, 4, labels=["ants"], api_name="/search")
    assert {hit["label"] for hit in only_ants["results"]} == {"ants"} and "labels ants" in only_ants["applied"]
    first = _client(url).predict(query, 3, api_name="/search")
    wrong = first["results"][1]["id"]
    again = _client(url).predict(query, 3, wrong=[wrong], api_name="/search")
    assert "1 wrong" in again["applied"] and wrong not in [hit["id"] for hit in again["results"]]


def test_oversized_upload_is_refused(served, tmp_path):
    url, _, _ = served
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))
    client = _client(url)
    with pytest.raises(Exception, match="(?i)too large|413|exceeds|upload limit"):
        client.predict(gradio_client.handle_file(str(big)), 5, api_name="/search")


def test_twenty_concurrent_queries_all_succeed(served):
    url, root, _ = served
    paths = [root / label / f"{i:02d}.png" for label in ("ants", "bees") for i in range(10)]

    def query(path):
        return _paths(_client(url).predict(gradio_client.handle_file(str(path)), 3, api_name="/search"))[0]

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


@pytest.mark.slow
def test_metrix_serve_command(gallery_index):
    root, index_dir = gallery_index
    with serve_process(index_dir) as (url, process):
        answer = _client(url).predict(gradio_client.handle_file(str(root / "ants" / "07.png")), 2, api_name="/search")
        assert _paths(answer)[0] == "ants/07.png"
    failed = metrix_cli("serve", "--index", root, check=False)
    assert failed.returncode == 2 and "no index here" in failed.stderr


@pytest.mark.slow
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


@pytest.mark.slow
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
