"""Generation backends (shim on arch/adapters: the real registry comes from arch/backends)."""
