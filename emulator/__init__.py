"""Local Azure for tests and demos: ARM Microsoft.Kusto, Microsoft Graph v1.0 and an App Service
style managed-identity endpoint, served over loopback TLS from a JSON tenant file.

Run it with ``python -m emulator --tenant FILE``; drive it from tests with
:class:`emulator.testing.EmulatorProcess`.
"""
