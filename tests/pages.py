"""Helpers for the browser tests (test_teleop, test_view): open a page, read its state, wait, find marker pixels."""
import time

import numpy as np

VIEWPORT = {"width": 1200, "height": 800}


def wait_for(what: str, fn, timeout_s: float, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def open_page(browser, url):
    page = browser.new_page(viewport=VIEWPORT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("window.teleop.state !== null", timeout=10_000)
    page.errors = errors
    return page


def page_state(page) -> dict:
    return page.evaluate("window.teleop.state")


def marker_pixels(png_path, rgb, tol: int = 12) -> np.ndarray:
    """(x, y) of the pixels within tol of a colour."""
    from PIL import Image
    img = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
    ys, xs = np.nonzero(np.all(np.abs(img - np.array(rgb)) <= tol, axis=2))
    return np.stack([xs, ys], 1).astype(float)
