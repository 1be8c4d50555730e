"""Kusto access sync: keeps Azure Data Explorer principal assignments in line with Entra ID.

The package holds everything below the Functions trigger layer: settings, the pure planning
core, the adapters for Graph, ARM and Storage, and the operator CLI (`python -m shared`).
"""
