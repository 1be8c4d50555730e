"""The pure core: principals, config, scopes, plan, settings, errors and tenant rules.

Nothing here imports an SDK, opens a connection or touches storage; it is tested with literals.
It imports nothing from `adapters`, `engine` or `handlers` (tests/unit/test_layers.py checks it)."""
