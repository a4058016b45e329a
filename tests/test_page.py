"""The search page's refinements clicked through in headless Chromium, each checked against the
JSON API of the same server (its own route, its own parsing): a region selected by two clicks,
label and path filters, right / wrong marks on the result tiles over three rounds, and why a result
matched."""

import re

import httpx
import pytest
from PIL import Image
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from metrix.index.build import build_index

from .browser import headless_chromium
from .pictures import assert_apart
from .service_helpers import free_port
from .test_refinements import write_gallery

pytestmark = pytest.mark.slow  # the fast lane (pytest -m 'not slow') leaves these out


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model):
    """A real server (page + API) on a free port, an HTTP client and one browser for the module."""
    from metrix.app.server import Server
    from metrix.index.live import LiveIndex

    root = tmp_path_factory.mktemp("page") / "gallery"
    assert_apart(tiny_model, root, write_gallery(root))
    index_dir = root.parent / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    server = Server(LiveIndex(index_dir), port=free_port()).start()
    browser = headless_chromium()
    try:
        with httpx.Client(timeout=30) as client:
            yield server.url, root, client, browser
    finally:
        browser.quit()
        server.stop()


def api_search(client, url, path, **fields) -> list[dict]:
    response = client.post(
        f"{url}api/search",
        files={"image": (path.name, path.read_bytes())},
        data={key: [str(v) for v in value] if isinstance(value, list) else str(value) for key, value in fields.items()},
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def open_and_upload(browser, url, path) -> WebDriverWait:
    browser.get(url)
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
    wait.until(lambda b: "most similar of" in status(b))
    return wait


def status(browser) -> str:
    return browser.execute_script("return document.getElementById('status').innerText;")


def shown_paths(browser) -> list[str]:
    """The paths in the result captions, read in one script (the gallery re-renders while a search lands)."""
    captions = browser.execute_script(
        "return [...document.querySelectorAll('#results .caption-label')].map(c => c.textContent.trim());"
    )
    return [c.split(" · ")[-1] for c in captions if c]


def wait_for_results(wait, expected: list[str]) -> None:
    """Until the page shows exactly these result paths (the message says what it showed instead)."""
    try:
        wait.until(lambda b: shown_paths(b) == expected)
    except TimeoutException:
        raise AssertionError(f"the page shows {shown_paths(wait._driver)}, the API answered {expected}") from None


def searched_on_the_page(site, query):
    """Upload `query` and wait for the page to show what the API answers: (wait, the API's hits)."""
    url, _, client, browser = site
    wait = open_and_upload(browser, url, query)
    hits = api_search(client, url, query, k=8)
    wait_for_results(wait, [h["path"] for h in hits])
    return wait, hits


def test_region_by_two_clicks(site, tmp_path):
    url, root, client, browser = site
    left, right = Image.open(root / "ants" / "03.png"), Image.open(root / "bees" / "05.png")
    composite = Image.new("RGB", (144, 56))
    composite.paste(left, (0, 0))
    composite.paste(right, (72, 0))
    composite.save(tmp_path / "composite.png")
    wait = open_and_upload(browser, url, tmp_path / "composite.png")
    region = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#region img"))[0]
    wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", region) == 144)

    def click(x: int, y: int) -> None:
        """On pixel (x, y) of the picture, wherever the page has placed and scaled it (CSS
        object-fit: scale-down, centred)."""
        width, height = browser.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", region
        )
        scale = min(width / 144, height / 56, 1)
        left_edge, top_edge = (width - 144 * scale) / 2, (height - 56 * scale) / 2
        ActionChains(browser).move_to_element_with_offset(
            region, round(left_edge + (x + 0.5) * scale - width / 2), round(top_edge + (y + 0.5) * scale - height / 2)
        ).click().perform()

    # a pixel in from each edge: the page's offsets are fractional, and a click that rounds off the picture selects nothing
    for (x0, y0, x1, y1), label in (((1, 1, 70, 54), "ants"), ((73, 1, 142, 54), "bees")):
        click(x0, y0)
        wait.until(lambda b: "opposite corner" in status(b))
        click(x1, y1)  # the corner pixels are inside the region
        wait.until(lambda b: "region" in status(b))
        box = browser.find_element(By.CSS_SELECTOR, "#box textarea, #box input").get_attribute("value")
        numbers = [int(v) for v in box.split(",")]
        assert all(abs(a - b) <= 1 for a, b in zip(numbers, (x0, y0, x1 + 1, y1 + 1))), box
        expected = [h["path"] for h in api_search(client, url, tmp_path / "composite.png", k=8, box=box)]
        assert expected[0].split("/")[0] == label  # the left (right) picture's class
        wait_for_results(wait, expected)


def test_filters_by_prefix_and_label(site):
    url, root, client, browser = site
    query = root / "cats" / "big" / "01.png"
    wait = open_and_upload(browser, url, query)
    prefix = browser.find_element(By.CSS_SELECTOR, "#prefix textarea, #prefix input")
    prefix.send_keys("cats/big/" + Keys.ENTER)
    expected = [h["path"] for h in api_search(client, url, query, k=8, path_prefix="cats/big/")]
    assert len(expected) == 6 and all(p.startswith("cats/big/") for p in expected)
    wait_for_results(wait, expected)
    assert "paths starting with 'cats/big/'" in status(browser)

    prefix.send_keys(Keys.CONTROL + "a", Keys.DELETE, Keys.ENTER)
    wait.until(lambda b: "starting with" not in status(b))
    field = browser.find_element(By.CSS_SELECTOR, "#labels input")
    field.click()

    def offered(b):  # the menu's options once each has its text (a loaded machine renders them late)
        texts = [o.text for o in b.find_elements(By.CSS_SELECTOR, "#labels li[role=option]")]
        return texts if texts and all(texts) else None

    assert wait.until(offered) == ["(gallery root) (3)", "ants (12)", "bees (12)", "cats (12)"]
    field.send_keys("bees")
    wait.until(lambda b: [o.text for o in b.find_elements(By.CSS_SELECTOR, "#labels li[role=option]")] == ["bees (12)"])
    browser.find_element(By.CSS_SELECTOR, "#labels li[role=option]").click()
    field.send_keys(Keys.ESCAPE)
    expected = [h["path"] for h in api_search(client, url, query, k=8, label="bees")]
    assert all(p.startswith("bees/") for p in expected)
    wait_for_results(wait, expected)
    assert "labels bees" in status(browser)


def captions(browser) -> dict[str, str]:
    """Each result tile's caption, by its path."""
    texts = browser.execute_script(
        "return [...document.querySelectorAll('#results .caption-label')].map(c => c.textContent.trim());"
    )
    return {text.split(" · ")[-1]: text for text in texts if text}


def test_feedback_is_marked_on_the_tiles_over_three_rounds(site):
    """Click a tile, mark it right or wrong: the search runs again at once with every mark (the API
    given the same marks answers the same), and each marked tile shows its mark."""
    url, root, client, browser = site
    query = root / "ants" / "01.png"
    wait, shown = searched_on_the_page(site, query)
    marks = {"right": [], "wrong": []}
    for rank, which in ((3, "right"), (5, "right"), (2, "wrong")):
        hit = next(h for h in shown[rank - 1 :] if h["id"] not in marks["right"] + marks["wrong"])
        tiles = browser.find_elements(By.CSS_SELECTOR, "#results .thumbnail-item")
        tiles[[h["id"] for h in shown].index(hit["id"])].click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#selected img[alt="{hit["path"]}"]'))
        browser.find_element(By.ID, f"mark-{which}").click()
        marks[which].append(hit["id"])
        shown = api_search(client, url, query, k=8, **marks)
        wait_for_results(wait, [h["path"] for h in shown])
    assert "feedback 2 right, 1 wrong" in status(browser)
    by_id = {h["id"]: h["path"] for h in shown}
    tiles = captions(browser)
    for which, badge in (("right", "✓ right · "), ("wrong", "✗ wrong · ")):
        for marked in marks[which]:
            if marked in by_id:  # a wrong-marked result may leave the top k
                assert tiles[by_id[marked]].startswith(badge), tiles[by_id[marked]]
    assert sum(text.startswith(("✓", "✗")) for text in tiles.values()) == sum(
        m in by_id for v in marks.values() for m in v
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "#right, #wrong, #feedback")  # no lists of file names to tick

    browser.find_element(By.ID, "forget").click()
    shown = api_search(client, url, query, k=8)
    wait_for_results(wait, [h["path"] for h in shown])
    assert not any(text.startswith(("✓", "✗")) for text in captions(browser).values())


def test_why_this_match_beside_the_enlarged_result(site):
    url, root, client, browser = site
    query = root / "bees" / "02.png"
    wait, hits = searched_on_the_page(site, query)
    browser.find_elements(By.CSS_SELECTOR, "#results .thumbnail-item")[1].click()
    wait.until(
        lambda b: b.execute_script(
            "const i = [...document.querySelectorAll('#why img')];"
            "return i.length === 2 && i.every(x => x.complete && x.naturalWidth === 256);"
        )
    )
    wait.until(
        lambda b: b.execute_script(
            "const i = document.querySelector('#selected img'); return i && i.complete && i.naturalWidth > 0;"
        )
    )
    text = browser.find_element(By.ID, "why").text
    assert f"{hits[1]['path']}: where it looks like the query" in text
    expected = client.post(
        f"{url}api/explain", files={"image": (query.name, query.read_bytes())}, data={"id": str(hits[1]["id"])}
    ).json()
    low = min(min(min(r) for r in expected[key]) for key in ("query_heatmap", "result_heatmap"))
    high = max(max(max(r) for r in expected[key]) for key in ("query_heatmap", "result_heatmap"))
    shown = re.search(
        r"from (-?\d+\.\d+) \(dark blue\) to (-?\d+\.\d+) \(yellow\); the two pictures' cosine is (-?\d+\.\d+)", text
    )
    assert shown, text
    assert [float(v) for v in shown.groups()] == pytest.approx([low, high, expected["score"]], abs=0.006)
