"""Tasks as data: the task.yaml schema, the registry, the metric contract and the hint store."""
