"""defectloop annotation-sync: Samples predictions for human annotation in Label Studio and publishes annotation.completed."""
