"""Server-side aggregation strategies."""
