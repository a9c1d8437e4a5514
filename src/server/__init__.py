"""Flower ServerApp: rounds, central evaluation, checkpoints, results."""
