"""her2scope.tiling stage."""
