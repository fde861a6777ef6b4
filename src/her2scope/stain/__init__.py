"""her2scope.stain stage."""
