"""The program's own path in the tests (test_settings.py, test_app_settings.py):
__main__.py run under the mock engine with its config as the Pulumi CLI hands it over."""

from __future__ import annotations

import json
import runpy

import pulumi

import mockcloud
from model import conventions


def run_main(monkeypatch, config: dict[str, object], secret: tuple[str, ...] = (), stack: str = "staging"
             ) -> tuple[list[mockcloud.Resource], SystemExit | None]:
    """Runs __main__.py as `pulumi up` would, with config in PULUMI_CONFIG (strings, lists as
    JSON) and the keys set with --secret in PULUMI_CONFIG_SECRET_KEYS."""
    as_cli_gives_it = {
        f"{conventions.PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()
    }
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(as_cli_gives_it))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps([f"{conventions.PROJECT}:{k}" for k in secret]))
    mocks = mockcloud.ProviderMocks("10.110.16.0/24")
    pulumi.runtime.set_mocks(mocks, project=conventions.PROJECT, stack=stack, preview=False)
    stopped: dict[str, SystemExit] = {}

    @pulumi.runtime.test
    def run():
        try:
            runpy.run_path(str(mockcloud.ROOT / "__main__.py"), run_name="__main__")
        except SystemExit as stop:
            stopped["exit"] = stop

    run()
    return mocks.resources, stopped.get("exit")
