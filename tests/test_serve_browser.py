"""The case page of ``mmdiag serve`` in headless Chromium: what it shows equals ``mmdiag predict`` for the same case.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``); ``.ci/run``
installs them. ``MMDIAG_SCREENSHOT=PATH`` saves a full-page screenshot of the results state (the README's
``docs/images/serve_case_page.png`` comes from it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmdiag
from mmdiag.cli.main import main
from mmdiag.data.synthetic import synthetic
from mmdiag.testing.server import free_port, wait_until_up

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TOKEN = "case-page-test-token-0123"


def _predict(capsys, run: Path, *inputs: str) -> dict[str, dict[str, float]]:
    capsys.readouterr()
    assert main(["predict", "--run", str(run), *[a for i in inputs for a in ("--input", i)]]) == 0
    return json.loads(capsys.readouterr().out)


def _start_server(run: Path, token_file: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(mmdiag.__file__).parents[1]),
                                                                   os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "mmdiag", "serve", "--run", str(run), "--host", "127.0.0.1",
                             "--port", str(port), "--token-file", str(token_file), "--device", "cpu"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90.0) -> None:
    try:
        wait_until_up(url, timeout, proc)
    except RuntimeError as e:
        pytest.fail(f"mmdiag serve: {e}:\n{log.read_text()}")


def _require_chromium() -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"the case-page test drives {CHROMIUM} through {CHROMEDRIVER}; install them with "
                    "`sudo apt-get install -y chromium chromium-driver` (Debian; .ci/run does this on CI)")


def _driver(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _shown_probabilities(root) -> dict[str, float]:
    from selenium.webdriver.common.by import By

    return {e.get_attribute("data-class"): float(e.get_attribute("data-probability"))
            for e in root.find_elements(By.CSS_SELECTOR, "[data-class][data-probability]")}


def _assert_equal(shown: dict[str, float], expected: dict[str, float]) -> None:
    assert shown.keys() == expected.keys()
    for cls, p in expected.items():
        assert shown[cls] == pytest.approx(p, abs=5e-7), cls


def _screenshot(driver, path: str) -> None:
    height, chrome = driver.execute_script("return [document.documentElement.scrollHeight, "
                                           "window.outerHeight - window.innerHeight]")
    driver.set_window_size(1280, max(1000, height) + chrome)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(path)
    driver.set_window_size(1280, 1000)


def test_case_page_shows_the_predict_probabilities_and_compares_by_modality(tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    _require_chromium()
    screenshot = os.environ.get("MMDIAG_SCREENSHOT")
    n_cases, size, epochs = (400, 32, 12) if screenshot else (60, 16, 1)  # the picture shows a model that learned
    run = tmp_path / "middle_fusion"
    assert main(["train", "--output", str(run), "model.name=middle_fusion", f"trainer.max_epochs={epochs}",
                 f"data.options.n_cases={n_cases}", f"data.options.image_size={size}",
                 "trainer.enable_progress_bar=false"]) == 0
    assert main(["eval", "--run", str(run), "--without", "all"]) == 0  # the card's missing-modality table
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    log = tmp_path / "serve.log"
    proc, url = _start_server(run, token_file, log)  # starts while the expected values are computed
    driver = None
    try:
        test_case = next(c for c in synthetic(n_cases=n_cases, image_size=size).cases if c.split == "test")
        case = {}
        for name in ("clinical", "dermoscopy"):
            case[name] = tmp_path / f"{name}.png"
            pixels = np.round(255 * test_case.inputs[name].transpose(1, 2, 0)).astype(np.uint8)
            Image.fromarray(pixels).save(case[name])
        values = test_case.inputs["record"]
        age, sex, marker = f"{values['age']:g}", values["sex"], f"{values['marker']:.3f}"  # site: not provided
        record = [f"record.age={age}", f"record.sex={sex}", f"record.marker={marker}"]
        expected = _predict(capsys, run, f"clinical={case['clinical']}", f"dermoscopy={case['dermoscopy']}",
                            *record)["diagnosis"]
        expected_first = _predict(capsys, run, f"clinical={case['clinical']}")["diagnosis"]

        _wait_healthy(proc, url, log)
        driver = _driver(tmp_path)
        wait = WebDriverWait(driver, 30)
        driver.get(url + "/")

        # the card needs the token: a wrong one is refused, the right one opens the page
        token = wait.until(ec.visibility_of_element_located((By.ID, "token")))
        token.send_keys("wrong-token-wrong-token")
        driver.find_element(By.ID, "token-submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "load-alert"), "refused"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "token-submit").click()
        wait.until(ec.visibility_of_element_located((By.ID, "file-clinical")))
        assert driver.execute_script("return sessionStorage.getItem('mmdiag.token')") == TOKEN
        assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"

        # every control has a label
        for control in driver.find_elements(By.CSS_SELECTOR, "#case input, #case select"):
            labels = driver.find_elements(By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']")
            assert labels, control.get_attribute("id")

        for name, path in case.items():
            driver.find_element(By.ID, f"file-{name}").send_keys(str(path))
            zone = driver.find_element(By.CSS_SELECTOR, f".upload[data-modality='{name}']")
            assert zone.get_attribute("data-state") == "provided"
            assert zone.find_element(By.CSS_SELECTOR, ".preview img").get_attribute("src").startswith("blob:")
        driver.find_element(By.ID, "in-record.age").send_keys(age)
        Select(driver.find_element(By.ID, "in-record.sex")).select_by_value(sex)
        driver.find_element(By.ID, "in-record.marker").send_keys(marker)
        assert driver.find_element(By.ID, "in-record.age").get_attribute("max") == "120"

        driver.find_element(By.ID, "predict").click()
        task = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#result [data-task='diagnosis']")))
        wait.until(lambda d: d.find_element(By.ID, "predict").is_enabled())
        _assert_equal(_shown_probabilities(task), expected)
        winner = max(expected, key=expected.get)
        marked = task.find_elements(By.CSS_SELECTOR, "[data-predicted='true']")
        assert [m.get_attribute("data-class") for m in marked] == [winner]
        assert "predicted" in marked[0].text  # marked in words, not by colour alone
        assert f"{expected[winner]:.6f}" in marked[0].text
        figures = driver.find_elements(By.CSS_SELECTOR, "#result figure.explanation")
        assert sorted(f.get_attribute("data-modality") for f in figures) == ["clinical", "dermoscopy"]
        for f in figures:
            assert f.find_element(By.CSS_SELECTOR, "img.map").get_attribute("src").startswith("data:image/png;base64,")
            assert f.find_element(By.CSS_SELECTOR, "input[type=range]").get_attribute("id")
        assert driver.find_element(By.ID, "alert").text == ""
        ablation = driver.find_elements(By.CSS_SELECTOR, "#missing-modalities tbody tr")
        assert [r.find_element(By.TAG_NAME, "th").text for r in ablation] == [
            "all modalities", "without clinical", "without dermoscopy", "without record"]
        if screenshot:
            _screenshot(driver, screenshot)

        # compare by modality: clinical, then + record, then + dermoscopy
        driver.find_element(By.ID, "tab-compare").click()
        driver.find_element(By.ID, "compare-run").click()
        table = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#compare table[data-task='diagnosis']")))
        wait.until(lambda d: d.find_element(By.ID, "compare-run").is_enabled())
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr[data-step]")
        assert [r.get_attribute("data-modalities") for r in rows] == [
            "clinical", "clinical,record", "clinical,record,dermoscopy"]  # in the order they were added
        _assert_equal(_shown_probabilities(rows[0]), expected_first)
        _assert_equal(_shown_probabilities(rows[-1]), expected)

        # a text file dropped as an image: the alert names the field and the input is marked invalid
        driver.find_element(By.ID, "tab-result").click()
        driver.execute_script(
            "const dt = new DataTransfer(); dt.items.add(new File(['not an image'], 'note.txt', {type: 'text/plain'}));"
            "document.querySelector(\".upload[data-modality='dermoscopy'] .drop\")"
            ".dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));")
        assert "note.txt" in driver.find_element(By.ID, "file-dermoscopy-state").text
        driver.find_element(By.ID, "predict").click()
        alert = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#alert .alert-title")))
        assert "415" in alert.text and "dermoscopy" in alert.text
        assert "dermoscopy" in driver.find_element(By.CSS_SELECTOR, "#alert .alert-message").text
        assert driver.find_element(By.ID, "alert").get_attribute("role") == "alert"
        assert driver.find_element(By.ID, "file-dermoscopy").get_attribute("aria-invalid") == "true"
        driver.find_element(By.ID, "file-dermoscopy-clear").click()
        assert driver.find_element(By.ID, "file-dermoscopy-state").text == "Not provided"
        assert driver.find_element(By.ID, "file-dermoscopy").get_attribute("aria-invalid") is None
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
