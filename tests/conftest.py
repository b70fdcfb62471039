"""Shared fixtures: real redis-server processes (and a local cluster), a local Mixpanel
endpoint. Nothing here touches a Redis the machine already runs."""

from __future__ import annotations

pytest_plugins = ["tests.support.redis_fixtures", "tests.support.mixpanel_endpoint"]
