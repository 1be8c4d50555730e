"""Health report: are the settings and the sync config valid, and which config version runs.

Answers without calling Azure and never includes a setting's value, only problems and names.
Settings that work but weaken a guarantee (role settings without App Service authentication, so
role-gated calls are refused) are reported as `warnings`.
"""
from __future__ import annotations

from shared.core.errors import ConfigError


def check(environ=None) -> tuple[int, dict]:
    """(HTTP status, body): 200 when settings and config are valid, 503 with every problem otherwise."""
    from shared.core.config import load_config
    from shared.core.settings import HttpSettings, Settings

    try:
        settings = Settings.from_env(environ)
        config = load_config(settings.sync_config)
    except ConfigError as error:
        return 503, {"status": "unhealthy", "source": error.source, "problems": error.problems}
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
