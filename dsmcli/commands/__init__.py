"""One module per CLI command family; each turns flags into a library call (thin layer)."""
