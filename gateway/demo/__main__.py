"""`python -m gateway.demo`: train the demo model (what `make serve` runs first)."""

import sys

from gateway.demo import train_demo_model

print(f"demo model at {train_demo_model()}", file=sys.stderr)
