"""Model registry tests."""
