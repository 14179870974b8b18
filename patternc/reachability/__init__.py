"""Reachability across layers: does information still get from every key to every query?"""

from patternc.reachability.graph import layered_graph
from patternc.reachability.report import EXACT_LIMIT, ReachReport, check_size, reach

__all__ = ["EXACT_LIMIT", "ReachReport", "check_size", "layered_graph", "reach"]
