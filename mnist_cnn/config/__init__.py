"""The guard layer around Hydra: config schema and validation, resolvers and process launching, sweep summaries."""
