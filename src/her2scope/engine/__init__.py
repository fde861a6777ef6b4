"""her2scope.engine stage."""
