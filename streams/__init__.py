"""cronorch: the Todo application's scheduling backbone on Kafka.

The folders are the layers (docs/architecture.md), top to bottom: ``cli`` → ``testing`` →
``processes`` → adapters (``kafka``, ``postgres``) → ``telemetry`` and ``settings`` →
``timeline`` and ``codec`` → ``jobs`` → ``schemas`` → ``timecore`` → ``errors``. Imports point
downwards only; the import-linter contracts in pyproject.toml enforce it.
"""

__version__ = "0.1.0"
