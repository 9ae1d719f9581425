"""Selection policies that are more than one top-k over a score (Python
functions over the ops' scores)."""
from obcache.policies.criticalkv import (adaptive_criticalkv_keep, critical_score, criticalkv_keep,
                                         criticalkv_select, output_error_bound)
from obcache.policies.criticalkv_pruned import pruned_keep
from obcache.policies.laprox import laprox_normalise, laprox_select

__all__ = ["criticalkv_select", "output_error_bound", "critical_score", "criticalkv_keep", "adaptive_criticalkv_keep",
           "pruned_keep", "laprox_normalise", "laprox_select"]
