"""`python -m shared`: the operator CLI (see shared/handlers/cli.py)."""
import sys

from shared.handlers.cli import main

sys.exit(main())
