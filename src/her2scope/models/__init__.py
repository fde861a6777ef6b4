"""her2scope.models stage."""
