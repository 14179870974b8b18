"""``python -m search``: the same app as ``patternc-search``."""

from search.app import main

main()
