"""Screenshot one trace in a Zipkin UI with headless Debian Chromium (the dashboard test's driver).

    .venv/bin/python scripts/zipkin_screenshot.py --image IMAGE_ID [--zipkin URL] [--out PNG]
    .venv/bin/python scripts/zipkin_screenshot.py --trace TRACE_ID ...

``--image`` finds the image's own trace (the one with its ``inference.image`` span, else the
first tagged with it) through Zipkin's API, as ``defectloop trace`` does. The page is
``<zipkin>/zipkin/traces/<trace id>``, opened by Playwright for Python over the system ``chromium``
with the same flags as the dashboard test (no sandbox, no GPU, no background networking, a fresh
profile); the screenshot is taken once the UI shows the trace's spans. The Zipkin integration
test runs this after its upload (``.artifacts/zipkin-trace.png``); after a short run of the local
stack (`defectloop up`, Zipkin on 127.0.0.1:9411) it works the same with an image id from
`defectloop trace` or the logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

IMAGE_TAG = "defectloop.image_id"  # defectloop.common.tracing.ATTR_IMAGE (kept import-free)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".artifacts" / "zipkin-trace.png"


class ScreenshotError(Exception):
    """What went wrong, for one `error:` line."""


def trace_of_image(zipkin: str, image_id: str) -> str:
    """The id of the image's own trace (the one holding its ``inference.image`` span)."""
    query = urllib.parse.urlencode(
        {"annotationQuery": f"{IMAGE_TAG}={image_id}", "limit": 10, "lookback": 7 * 86_400_000}
    )
    with urllib.request.urlopen(f"{zipkin}/api/v2/traces?{query}", timeout=30) as resp:
        traces = json.load(resp)
    spans = [span for trace in traces for span in trace]
    if not spans:
        raise ScreenshotError(f"no trace of image {image_id} in Zipkin at {zipkin}")
    own = [s["traceId"] for s in spans if s.get("name") == "inference.image"]
    return str(own[0] if own else spans[0]["traceId"])


async def screenshot(zipkin: str, trace_id: str, out: Path, *, timeout_s: float = 60.0) -> Path:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    from defectloop.testing.browser import CHROMIUM_ARGS, system_chromium

    chromium = system_chromium()
    if chromium is None:
        raise ScreenshotError("no chromium on PATH (scripts/ensure-system-deps.sh installs it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zipkin-shot-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=chromium,
                headless=True,
                args=list(CHROMIUM_ARGS),
                viewport={"width": 1500, "height": 900},
            )
            try:
                page = await context.new_page()
                await page.goto(f"{zipkin}/zipkin/traces/{trace_id}")
                # The UI draws the spans after fetching the trace: wait until a span name of
                # this trace is on the page (every defectloop trace has a span of one service).
                await page.wait_for_function(
                    "document.body && /ingest|inference|annotation-sync|monitor|trainer/"
                    ".test(document.body.innerText)",
                    timeout=timeout_s * 1000,
                )
                await page.wait_for_load_state("networkidle", timeout=timeout_s * 1000)
                await page.screenshot(path=str(out), full_page=True)
            except PlaywrightError as exc:  # its TimeoutError included
                raise ScreenshotError(
                    f"the Zipkin UI did not show trace {trace_id}: {exc}"
                ) from exc
            finally:
                await context.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", help="an image id: its own trace is shown")
    which.add_argument("--trace", help="a trace id (32 hex digits)")
    parser.add_argument("--zipkin", default="http://127.0.0.1:9411", help="Zipkin's base URL")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the PNG to write")
    args = parser.parse_args(argv)
    zipkin = args.zipkin.rstrip("/")
    try:
        trace_id = args.trace or trace_of_image(zipkin, args.image)
        out = asyncio.run(screenshot(zipkin, trace_id, args.out))
    except (ScreenshotError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("hint: is Zipkin up (defectloop status) and the trace exported?", file=sys.stderr)
        return 1
    print(f"{out}  ({zipkin}/zipkin/traces/{trace_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
