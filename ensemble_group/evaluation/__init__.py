"""Score a grouping against ground-truth product labels (offline evaluation only)."""

from .labels import align, read_labels
from .metrics import (
    adjusted_rand_index,
    bcubed,
    contingency,
    format_table,
    mean_image_f1,
    n_groups,
    normalized_mutual_info,
    pairwise_prf,
    recall_at_k,
    score,
)

__all__ = [
    "adjusted_rand_index", "align", "bcubed", "contingency", "format_table", "mean_image_f1",
    "n_groups", "normalized_mutual_info", "pairwise_prf", "read_labels", "recall_at_k", "score",
]
