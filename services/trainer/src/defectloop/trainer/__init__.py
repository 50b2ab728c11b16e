"""defectloop trainer: Reacts to metric.degraded: retrains from the current model, gates, registers with lineage and deploys."""
