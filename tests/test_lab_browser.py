"""JupyterLab in a real browser: 03_scaling opened, run and read in headless Chromium (Debian's `chromium`
and `chromium-driver`, driven by Selenium; nothing downloads a browser), and one exported HTML report read.

Skipped, with the reason, where the browser or its driver is missing: `make test` stays usable without
them. CI installs both (`.ci/run`); locally: `apt-get install -y chromium chromium-driver`, then
`.venv/bin/python -m pytest -m slow tests/test_lab_browser.py`.
"""

import base64
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import WHOLE_TINY_SUITE
from suite_helpers import TINY, write_params

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no headless browser: install Debian's chromium and chromium-driver to run it",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5, state=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f"; state: {state()}" if state else "")
    )


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e .[test])"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,2400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab from this venv on 127.0.0.1 with a token, serving a folder holding 03_scaling with its
    run folder and params set to the test's; stopped by its PID (its whole process group) afterwards."""
    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.read(ROOT / "notebooks" / "03_scaling.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    # the test's own run folder, and the smoke params made tiny (suite_helpers.TINY: fewer reads, the same code
    # path and the same four torchrun launches; nbval runs 03 on the smoke params themselves)
    tiny = write_params(tmp_path, **TINY)
    params.source += f"\nrun_dir = {str(tmp_path / 'run')!r}\nparams_file = {str(tiny)!r}\n"
    # 03 runs its chains in torchrun processes, whose bars go to their logs: one cell of the runs' own
    # progress bar in the kernel shows whether the widget extension renders it
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "from perfkit.progress import LiveProgress\n"
            "progress = LiveProgress(total=3, desc='widget check')\n"
            "for _ in range(3):\n    progress.update(1, 100, 128)\nprogress.close()"
        )
    )
    nbformat.write(nb, root / "03_scaling.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "lab.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",
            "--LabApp.expose_app_in_browser=True",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=root,
    )
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return server.poll() is not None  # died: stop waiting, the assert below says so

    _wait_for(up, 60, "the JupyterLab server to answer")
    assert server.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
    yield {"base": base, "token": token, "root": root, "run_dir": tmp_path / "run", "pid": server.pid}
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log.close()
    assert server.poll() is not None


def _nonblank_png(data_uri: str) -> bool:
    from PIL import Image

    assert data_uri.startswith("data:image/png;base64,"), data_uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("L")
    low, high = image.getextrema()
    return image.width > 50 and image.height > 50 and high - low > 50  # more than one flat colour


# the kernel status of the open 03_scaling notebook, found among the main area's widgets through the app object
# (--LabApp.expose_app_in_browser; shell.currentWidget stays null until the page has focus), or None
KERNEL_STATUS = (
    "try { const w = Array.from(window.jupyterapp.shell.widgets('main'))"
    ".find(w => w.context && w.context.path.endsWith('03_scaling.ipynb'));"
    " return w.sessionContext.session.kernel.status } catch (e) { return null }"
)


def test_03_scaling_runs_in_jupyterlab_in_a_real_browser(lab, browser, tmp_path):
    started = time.monotonic()
    browser.get(f"{lab['base']}/lab/tree/03_scaling.ipynb?token={lab['token']}")
    _wait_for(
        lambda: browser.execute_script(KERNEL_STATUS) == "idle",
        90,
        "the notebook to open with an idle kernel",
    )
    # focus: commands act on it
    browser.find_element("css selector", ".jp-NotebookPanel .jp-Notebook").click()
    _wait_for(lambda: browser.execute_script("return !!window.jupyterapp.shell.currentWidget"), 10, "focus")
    kernel = browser.execute_script(
        "return window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayName"
    )
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def all_ran():
        prompts = browser.execute_script(
            "return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))"
            ".map(e => e.textContent.trim())"
        )
        status = browser.execute_script(KERNEL_STATUS)
        done = prompts and all(p not in ("[ ]:", "[*]:", "") for p in prompts) and status == "idle"
        return prompts if done else None

    def state():
        return (
            browser.execute_script(
                "return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))"
                ".map(e => e.textContent.trim())"
            ),
            browser.execute_script(KERNEL_STATUS),
        )

    prompts = _wait_for(
        all_ran, 240, "every cell to run and the kernel to go idle", interval=1.0, state=state
    )
    text = browser.execute_script("return document.querySelector('.jp-Notebook').innerText")
    errors = browser.find_elements(
        "css selector", ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
    )
    assert not errors, errors[0].text[:2000]
    assert "Traceback" not in text and "Error displaying widget" not in text
    # the notebook's own output: its setup line and the criterion's figures
    assert "params: smoke" in text and "scaling_factor_end_to_end" in text
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output img'))"
        ".map(i => [i.src, i.naturalWidth, i.naturalHeight])"
    )
    assert len(images) >= 4, f"expected the scaling figures, found {len(images)} image(s)"
    for src, width, height in images:
        assert width > 50 and height > 50 and _nonblank_png(src)
    # the progress bar renders as a widget (tqdm.auto in a kernel), not as an error or as plain text
    widget_errors = browser.find_elements("xpath", "//*[contains(text(), 'Error displaying widget')]")
    assert not widget_errors
    bars = browser.find_elements(
        "css selector", ".jp-OutputArea-output .widget-hprogress, .jp-OutputArea-output progress"
    )
    assert bars, "the progress widget did not render"
    assert "widget check" in text and "3/3" in text
    assert json.loads((lab["run_dir"] / "03_scaling" / "metrics.json").read_text())["status"] == "complete"
    shot = tmp_path / "jupyterlab-03_scaling.png"
    browser.set_window_size(
        1400,
        max(
            2400,
            browser.execute_script(
                "return document.querySelector('.jp-WindowedPanel-outer, .jp-Notebook').scrollHeight"
            )
            + 200,
        ),
    )
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    print(
        f"kernel {kernel}; {len(prompts)} cells; {len(images)} figures; screenshot {shot}; "
        f"{time.monotonic() - started:.0f} s"
    )


@WHOLE_TINY_SUITE
def test_an_exported_summary_report_shows_its_criteria(browser, whole_tiny_suite, tmp_path):
    _, _, out = whole_tiny_suite  # the report `make demo` exports, of a whole (tiny) suite run
    browser.get((out / "06_summary.html").as_uri())
    table = _wait_for(lambda: browser.find_elements("css selector", "table"), 30, "the criteria table")
    visible = [t for t in table if t.is_displayed() and "full_sample_time" in t.text]
    assert visible, "no visible table names the criteria"
    assert all(
        name in visible[0].text for name in ("gpu_utilisation", "two_gpu_scaling", "packing_efficiency")
    )
    images = browser.execute_script(
        "return Array.from(document.images).filter(i => i.offsetWidth > 0).map(i => i.src)"
    )
    assert images and any(_nonblank_png(src) for src in images)  # the criteria figure, drawn
    browser.save_screenshot(str(tmp_path / "06_summary.png"))
