"""Health report: are the settings and the sync config valid, and which config version runs.

The endpoint is anonymous, so it answers without calling Azure and names what is wrong (a setting,
or a path in the config) but never a value: a value can be a connection string or a URL with
credentials. `python -m shared check` prints the full problems where the operator runs it.
Settings that work but weaken a guarantee (role settings without App Service authentication, so
role-gated calls are refused) are reported as `warnings`.
"""
from __future__ import annotations

import os
import re

from shared.core.errors import ConfigError

_NAME = re.compile(r"^[\w.\[\]-]+$")


def check(environ=None) -> tuple[int, dict]:
    """(HTTP status, body): 200 when settings and config are valid, 503 naming every problem otherwise."""
    from shared.core.config import load_config
    from shared.core.settings import BINDING_SETTINGS, HttpSettings, Settings

    env = os.environ if environ is None else environ
    unset = [key for key in BINDING_SETTINGS if not env.get(key, "").strip()]
    try:
        settings = Settings.from_env(environ)
        if unset:
            raise ConfigError([f"{key}: missing (the Functions host reads it from app settings)" for key in unset],
                              source="app settings")
        config = load_config(settings.sync_config)
    except ConfigError as error:
        return 503, {"status": "unhealthy", "source": _source(error.source), "invalid": _names(error.problems),
                     "hint": "run `python -m shared check` with the same settings for the details"}
    except Exception as error:  # e.g. a config format whose parser is missing: still an answer, not a 500
        return 503, {"status": "unhealthy", "source": "SYNC_CONFIG", "invalid": ["SYNC_CONFIG"],
                     "error": type(error).__name__}
    warnings = HttpSettings.from_env(environ).problems()
    return 200, {
        "status": "healthy",
        **({"warnings": warnings} if warnings else {}),
        "configVersion": config.version,
        "mappings": len(config.mappings),
        "clusters": len(config.clusters()),
        "cloud": settings.cloud.name,
        "dryRun": settings.dry_run,
    }


def _names(problems: list[str]) -> list[str]:
    """The setting or config path each problem is about ("SYNC_CONFIG" when it names none)."""
    names = []
    for problem in problems:
        name = problem.split(":", 1)[0].strip()
        name = name if _NAME.match(name) else "SYNC_CONFIG"
        if name not in names:
            names.append(name)
    return names


def _source(source: str) -> str:
    """"app settings", or "SYNC_CONFIG": a config's source is a file path or the inline config's name."""
    return source if source == "app settings" else "SYNC_CONFIG"
