"""Selection policies that are more than one top-k over a score (Python
functions over the ops' scores)."""
from obcache.policies.criticalkv import criticalkv_select, output_error_bound

__all__ = ["criticalkv_select", "output_error_bound"]
