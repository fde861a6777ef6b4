"""her2scope.explain stage."""
