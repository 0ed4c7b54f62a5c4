"""Which served entity answers: the weighted split (and, later, fallback order)."""
