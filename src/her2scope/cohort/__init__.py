"""her2scope.cohort stage."""
