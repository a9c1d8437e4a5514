"""The ServerApp identity Flower sets before messages are made (autouse)."""

from tests.strategies.federation_grid import server_identity  # noqa: F401
