"""Flower ClientApp: a hospital's local training and evaluation."""
