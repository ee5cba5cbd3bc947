"""Read-only views of searches: summaries, figures, reports, comparisons."""
