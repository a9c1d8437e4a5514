"""Launching a Flower federation on this machine: SuperLink + one SuperNode per
hospital (TLS, SuperNode authentication) or Flower's simulation engine; run logs
streamed live; every process torn down whatever happens (`federation.run_federation`)."""
