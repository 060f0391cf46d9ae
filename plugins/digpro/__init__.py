"""clustkit plugin 'digpro' (work in progress)."""
