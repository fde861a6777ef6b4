"""her2scope.evaluate stage."""
