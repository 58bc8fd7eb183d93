"""cronorch: the Todo application's scheduling backbone on Kafka.

The package is layered (see docs/architecture.md): errors → time core (localtime,
recurrence, cron) → planning → codec/state → adapters (kafka, postgres, metrics,
settings) → wiring (app, agents) → CLI. Imports point downwards only; the
import-linter contract in pyproject.toml enforces it.
"""

__version__ = "0.1.0"
