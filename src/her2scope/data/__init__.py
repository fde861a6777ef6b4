"""her2scope.data stage."""
