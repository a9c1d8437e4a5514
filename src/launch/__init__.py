"""Launching a Flower federation on this machine: SuperLink + one SuperNode per
hospital (TLS, SuperNode authentication) or Flower's simulation engine; run logs
streamed live; every process torn down whatever happens."""

from src.launch.configs import Hospital
from src.launch.federation import Outcome, run_federation

__all__ = ["Hospital", "Outcome", "run_federation"]
