"""The engine: gather → plan → guard → apply → report (reconcile), quick cycles (delta) and the
resolution of a principal reference to its directory identity (resolve).

It imports the core and the adapters' Protocols, never the handlers."""
