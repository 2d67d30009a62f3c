"""Run folders: the append-only journal, the node store, diffs, atomic writes."""
