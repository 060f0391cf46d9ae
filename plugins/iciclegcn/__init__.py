"""clustkit plugin 'iciclegcn' (work in progress)."""
