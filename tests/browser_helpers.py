"""Headless Chromium for the companion-app tests: start it offline, size it, read its log."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

PHONE = (390, 844)  # an iPhone 12-14 sized viewport, CSS pixels
DESKTOP = (1366, 800)
SMALL_PHONE = (320, 568)
LANDSCAPE_PHONE = (844, 390)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for p, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not p.exists():
            return f"{p} is missing (Debian package {pkg}; `make test` installs it)"
    return None


class Browser:
    """One headless Chromium with a fresh profile; nothing in it talks to the internet."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="continuon-chromium-"))
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--metrics-recording-only",
            f"--user-data-dir={self.profile}",
            "--window-size=1366,900",
        ):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
        self.driver.set_script_timeout(10)

    def viewport(self, width: int, height: int, *, mobile: bool = True) -> None:
        """Emulate a device viewport (CSS pixels); phones get touch input too."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": width,
                "height": height,
                "deviceScaleFactor": 2 if mobile else 1,
                "mobile": mobile,
            },
        )
        self.driver.execute_cdp_cmd(
            "Emulation.setTouchEmulationEnabled", {"enabled": mobile, "maxTouchPoints": 5}
        )

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def console(self) -> list[dict]:
        """Console entries since the last call (Chromium hands each one out once)."""
        return self.driver.get_log("browser")

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
