"""defectloop ingest: HTTP endpoint for camera gateways: authenticates, validates and measures images, stores them content-addressed and publishes image.captured or image.rejected."""
