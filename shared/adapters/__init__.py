"""One adapter per external API, each behind a small Protocol: directory (Microsoft Graph), kusto
(ARM), and Azure Storage (audit, ledger, locks, queues, tables).

Adapters import the core and each other's storage plumbing, never the engine or the handlers."""
