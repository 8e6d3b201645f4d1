"""End to end in headless Chromium: a scripted reader answers, the server is killed and restarted midway,
no answer is lost, the reader resumes, and the report's numbers match the answers given."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
           "install them with .ci/install-browser.sh")

# Runs only the turing command, so this test does not depend on every other mcfast command being importable.
RUNNER = ("import argparse, sys; from mcfast.commands import turing; p = argparse.ArgumentParser(); "
          "turing.register(p.add_subparsers(dest='command')); a = p.parse_args(['turing'] + sys.argv[1:]); "
          "sys.exit(a.func(a))")
READY_TIMEOUT_S = 30
WAIT_S = 15
N_IMAGES = 6
WINDOW_WORD = {"lung": "Lung", "soft_tissue": "Soft-tissue", "bone": "Bone"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`mcfast turing serve` in a subprocess on 127.0.0.1:port."""

    def __init__(self, study: Path, port: int, log: Path):
        self.study, self.port, self.log = study, port, log
        self.proc = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, "serve", "--study", str(self.study),
                                          "--host", "127.0.0.1", "--port", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"server not ready within {READY_TIMEOUT_S} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, so only what was committed can survive."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def make_ct_inputs(root: Path) -> tuple[Path, Path]:
    """Real: smooth 'body' ellipses in HU; synthetic: noisy ones. Both NPY, so both are windowed."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:48j, -1:1:48j]
    body = (xx / 0.9) ** 2 + (yy / 0.7) ** 2 < 1
    real, fake = root / "real", root / "synthetic"
    real.mkdir()
    fake.mkdir()
    for i in range(N_IMAGES // 2):
        np.save(real / f"r{i}.npy", np.where(body, 40.0, -1000.0) + rng.normal(0, 20, body.shape))
        np.save(fake / f"s{i}.npy", np.where(body, 40.0, -1000.0) + rng.normal(0, 200, body.shape))
    return real, fake


def make_driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    return driver


def test_reader_in_chromium_survives_restart(tmp_path):
    from mcfast.evaluate.turing.study import create_study, open_study

    real, fake = make_ct_inputs(tmp_path)
    study = tmp_path / "study"
    create_study(study, real, fake, n=N_IMAGES, seed=11, size=128, modality="ct", progress=False)
    codes = {reader.name: code for reader, code in open_study(study).invite(["Reader One", "Reader Two"])}
    images = {im.image_id: im for im in open_study(study).images()}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = Server(study, port, tmp_path / "server.log")
    server.start()
    try:
        given = run_readers(server, url, images, codes, tmp_path)
    finally:
        server.kill()
    check_store_and_report(study, images, given, tmp_path)


def run_readers(server: Server, url: str, images: dict, codes: dict, tmp_path: Path) -> list[tuple[str, str, int]]:
    """Reader One in Chromium (with a server crash midway), Reader Two over HTTP; returns Reader One's answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver = make_driver(tmp_path / "profile")
    wait = WebDriverWait(driver, WAIT_S)
    given: list[tuple[str, str, int]] = []

    def current_image() -> str:
        wait.until(lambda d: d.find_element(By.ID, "image").get_attribute("data-loaded") == "true")
        return driver.find_element(By.ID, "image").get_attribute("data-image-id")

    def check_screen(k: int, image_id: str) -> None:
        assert driver.find_element(By.ID, "progress").text == f"Image {k + 1} of {N_IMAGES}"
        window = images[image_id].window
        assert driver.find_element(By.ID, "window-label").text.startswith(WINDOW_WORD[window])

    def plan(k: int) -> tuple[str, int]:
        return ("real" if k % 3 == 0 else "synthetic", 1 + (k * 2) % 5)

    def answer_by_click(k: int) -> None:
        image_id = current_image()
        check_screen(k, image_id)
        label, confidence = plan(k)
        assert not driver.find_element(By.ID, "btn-real").is_enabled()   # confidence first
        driver.find_element(By.ID, f"conf-{confidence}").click()
        driver.find_element(By.ID, "btn-real" if label == "real" else "btn-fake").click()
        wait.until(lambda d: d.find_element(By.ID, "done").is_displayed()
                   or d.find_element(By.ID, "image").get_attribute("data-image-id") != image_id)
        given.append((image_id, label, confidence))

    try:
        # A link with a wrong code: refused with a message, and the code is wiped from the address bar.
        driver.get(f"{url}#code=WRONG-CODE")
        wait.until(lambda d: "unknown reader code" in d.find_element(By.ID, "login-error").text)
        assert "code=" not in driver.current_url
        # The code typed by hand, lower case and without dashes, signs Reader One in.
        typed = codes["Reader One"].replace("-", "").lower()
        wait.until(EC.visibility_of_element_located((By.ID, "code"))).send_keys(typed)
        driver.find_element(By.ID, "start").click()
        current_image()
        assert driver.find_element(By.ID, "reader").text == "Reader One"
        driver.find_element(By.ID, "zoom-in").click()
        assert driver.find_element(By.ID, "zoom-level").text == "125%"
        driver.find_element(By.ID, "zoom-fit").click()
        assert driver.find_element(By.ID, "zoom-level").text == "100%"
        for k in range(3):
            answer_by_click(k)

        # The server dies with the 4th answer pending: the page says so and keeps the reader's choice.
        image_id = current_image()
        server.kill()
        label, confidence = plan(3)
        button = "btn-real" if label == "real" else "btn-fake"
        driver.find_element(By.ID, f"conf-{confidence}").click()
        driver.find_element(By.ID, button).click()
        wait.until(lambda d: "Could not save" in d.find_element(By.ID, "answer-error").text)
        server.start()
        driver.find_element(By.ID, button).click()                        # retry the same answer
        wait.until(lambda d: d.find_element(By.ID, "image").get_attribute("data-image-id") != image_id)
        given.append((image_id, label, confidence))

        # A reload resumes from the cookie at image 5; answer by keyboard this time.
        driver.refresh()
        for k in range(4, N_IMAGES):
            image_id = current_image()
            check_screen(k, image_id)
            label, confidence = plan(k)
            body = driver.find_element(By.TAG_NAME, "body")
            body.send_keys(str(confidence))
            body.send_keys("r" if label == "real" else "f")
            wait.until(lambda d: d.find_element(By.ID, "done").is_displayed()
                       or d.find_element(By.ID, "image").get_attribute("data-image-id") != image_id)
            given.append((image_id, label, confidence))
        wait.until(EC.visibility_of_element_located((By.ID, "done")))
        assert f"All {N_IMAGES} images" in driver.find_element(By.ID, "done-text").text
        # Reader Two's link opened in the same tab (only the fragment changes, no reload) switches reader.
        driver.get(f"{url}#code={codes['Reader Two']}")
        wait.until(lambda d: d.find_element(By.ID, "reader").text == "Reader Two")
        current_image()
        assert "code=" not in driver.current_url
    finally:
        driver.quit()

    # The second reader through plain HTTP on the same (real uvicorn) server: says the opposite of reader one.
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/api/session", json={"name": "Reader Two"}).status_code == 422   # no name sign-in
        assert client.get("/healthz", headers={"host": f"rebound.example:{server.port}"}).status_code == 421
        state = client.post("/api/session", json={"code": codes["Reader Two"]}).json()
        image = client.get(f"/api/image/{state['image_id']}")
        assert image.status_code == 200
        assert not {"server", "date", "last-modified", "etag"} & set(image.headers)
        lengths = {len(client.get(f"/api/image/{i}").content) for i in images}       # the real server too
        assert lengths == {int(image.headers["content-length"])}
        for image_id, label, _ in given:
            assert state["image_id"] == image_id                      # one shared order for all readers
            opposite = "synthetic" if label == "real" else "real"
            state = client.post("/api/answer", json={"image_id": image_id, "answer": opposite,
                                                     "confidence": 3}).json()
        assert state["image_id"] is None
    return given


def check_store_and_report(study: Path, images: dict, given: list[tuple[str, str, int]], tmp_path: Path) -> None:
    from mcfast.evaluate.turing.report import write_report
    from mcfast.evaluate.turing.study import open_study

    # Nothing lost: the database holds exactly what the reader clicked, in order.
    store = open_study(study)
    stored = [(a.image_id, a.answer, a.confidence) for a in store.answers() if a.reader == "Reader One"]
    assert stored == given
    assert len(given) == N_IMAGES and len({g[0] for g in given}) == N_IMAGES

    numbers = write_report(store, tmp_path / "report.html")
    assert json.loads((tmp_path / "report.json").read_text()) == numbers
    truth = {im.image_id: ("real" if Path(im.source).parent.name == "real" else "synthetic")
             for im in images.values()}
    correct_one = sum(truth[i] == label for i, label, _ in given)
    rows = {r["reader"]: r for r in numbers["readers"]}
    assert rows["Reader One"]["accuracy"]["successes"] == correct_one
    assert rows["Reader Two"]["accuracy"]["successes"] == N_IMAGES - correct_one
    assert rows["Reader One"]["sensitivity"]["successes"] == sum(
        truth[i] == label == "synthetic" for i, label, _ in given)
    assert rows["Reader One"]["mean_confidence"] == pytest.approx(np.mean([c for *_, c in given]))
    assert numbers["pooled"]["accuracy"]["successes"] == N_IMAGES
    # Two readers who always disagree: P̄ = 0, and with p_real = p_fake = 1/2, κ = (0 − 1/2) / (1/2) = −1.
    assert numbers["fleiss_kappa"]["value"] == pytest.approx(-1.0)
