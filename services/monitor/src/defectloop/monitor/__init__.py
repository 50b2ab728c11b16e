"""defectloop monitor: Joins predictions with annotations per site and model, watches drift and data quality, publishes metric.degraded and serves the ops dashboard."""
