"""her2scope.report stage."""
