"""Everything that reads models from disk or the Hub: the registry (weights.toml), checkpoint files and the
cache (files), safetensors → modules (weights)."""
