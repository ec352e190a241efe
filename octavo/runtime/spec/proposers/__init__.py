"""One module per proposer, named by its `speculative_config` method; each names its class in
PROPOSER. This package and its parent import nothing heavy, so the config can list the methods."""
