"""Version of the rendering code: bump it when a (site, seed, index) renders differently."""

SIMULATOR_VERSION = "1"
