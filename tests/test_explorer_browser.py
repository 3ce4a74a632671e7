"""The explorer in a real browser: Voila serves notebook 05, headless Chromium opens it, a control changes.

The test makes its own small store (MiniLM on POS, ``make quick``'s train budget) in a temporary folder,
points a copy of the notebook at it, starts Voila on 127.0.0.1 at a free port, and drives Debian's
``chromium`` through ``chromium-driver`` with Selenium. It is skipped, saying so, when the browser is not
installed (``apt-get install chromium chromium-driver``; ``.ci/run`` installs it). Set
``EXPLORER_SCREENSHOT=path.png`` to keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_explore.ipynb"
QUICK_TRAIN_TOKENS = 4000  # notebooks/params/quick.yaml: token_budget

pytestmark = pytest.mark.browser


def _browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver, or skip with the command that installs them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "headless Chromium is not installed (apt-get install chromium chromium-driver): "
            "the browser test of the explorer is skipped"
        )
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -r requirements.txt)")
    pytest.importorskip("voila", reason="voila is not installed (pip install -r requirements.txt)")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with code {proc.returncode} before it served the page")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"voila did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def notebook_copy(folder: Path, **params: object) -> Path:
    """Notebook 05 with a cell setting ``params`` right after its parameters cell (as papermill would)."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


def open_explorer(notebook: Path, screenshot: Path, *, expect_status: str, timeout: float = 300.0) -> dict:
    """Serve ``notebook`` with Voila, open it in headless Chromium, pick CKA column 2, screenshot it.

    Then open the neuron card tab and screenshot that too (``<screenshot stem>-card.png``). Returns what
    was seen: the page's text before and after the change and on the card tab, the images drawn, the tab
    titles.
    """
    chromium, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    log = open(screenshot.with_suffix(".voila.log"), "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            str(notebook),
            "--no-browser",
            "--Voila.ip=127.0.0.1",
            f"--port={port}",
            "--VoilaConfiguration.show_tracebacks=True",
        ],
        cwd=notebook.parent,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1700",
    ):
        options.add_argument(arg)
    browser = None
    try:
        _wait_for_port(port, proc, 120)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        browser.set_page_load_timeout(timeout)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, timeout)
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), expect_status))
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "CKA(layer 0, layer 0)"))
        before = browser.find_element(By.TAG_NAME, "body").text
        column = browser.find_element(
            By.XPATH, "//div[contains(@class,'widget-dropdown')][.//label[contains(., 'CKA column')]]//select"
        )
        Select(column).select_by_visible_text("2")
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "CKA(layer 0, layer 2)"))
        wait.until(
            lambda b: (
                b.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth > 100).length")
                >= 2
            )
        )
        images = browser.execute_script(
            "return [...document.images].filter(i => i.offsetParent !== null).map(i => [i.naturalWidth, i.naturalHeight])"
        )
        tabs = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".lm-TabBar-tabLabel, .p-TabBar-tabLabel")]
        after = browser.find_element(By.TAG_NAME, "body").text
        browser.save_screenshot(str(screenshot))
        card_tab = browser.find_element(
            By.XPATH, "//*[contains(@class,'TabBar-tabLabel')][normalize-space()='Neuron card']"
        )
        card_tab.click()
        wait.until(ec.visibility_of_element_located((By.XPATH, "//*[contains(text(),'highest activations')]")))
        card = browser.find_element(By.TAG_NAME, "body").text
        browser.save_screenshot(str(screenshot.with_name(screenshot.stem + "-card.png")))
        return {"before": before, "after": after, "images": images, "tabs": tabs, "card": card}
    finally:
        if browser is not None:
            browser.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_explorer_renders_and_answers_in_headless_chromium(tmp_path):
    _browser()
    from utils.activations import task_stores

    stores = tmp_path / "activations"
    store = task_stores(
        "minilm", "pos", token_budget=QUICK_TRAIN_TOKENS, seed=0, splits=("train",), root=stores, progress=False
    )["train"]
    notebook = notebook_copy(
        tmp_path / "nb",
        model="minilm",
        task="pos",
        store_root=str(stores),
        cache_root=str(tmp_path / "explorer-cache"),
        figures_dirs=[str(tmp_path / "figures")],
    )
    shot = tmp_path / "explorer.png"
    seen = open_explorer(notebook, shot, expect_status=f"minilm · pos: {len(store):,} words")
    assert "Redundancy explorer" in seen["before"] and "CKA(layer 0, layer 0) = 1.000" in seen["before"]
    assert "CKA(layer 0, layer 2)" in seen["after"] and "CKA(layer 0, layer 0)" not in seen["after"]
    assert "neuron 0:0" in seen["card"] and "[[" in seen["card"]  # the card tab: a neuron's top words in context
    assert "notebooks/04_feature_selected_transfer.ipynb" in seen["after"]  # no transfer result here: says who makes it
    assert seen["tabs"][:4] == ["Layers (CKA)", "Clusters", "Neuron card", "Your sentence"]
    assert sum(1 for w, h in seen["images"] if w > 100 and h > 100) >= 2  # the CKA heatmap and the pair heatmap
    assert shot.stat().st_size > 10_000
    if os.environ.get("EXPLORER_SCREENSHOT"):
        target = Path(os.environ["EXPLORER_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
        shutil.copyfile(shot.with_name("explorer-card.png"), target.with_name(target.stem + "-card.png"))
