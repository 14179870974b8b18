"""Hydra plugin of patternc-search: the sweeper that launches a study's workers (search.workers)."""
