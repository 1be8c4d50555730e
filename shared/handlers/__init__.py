"""Entry-point handlers: onboarding and notification messages, the HTTP API, queued runs, the CLI
and health. Plain Python in, plain Python out; `function_app.py` translates the bindings."""
