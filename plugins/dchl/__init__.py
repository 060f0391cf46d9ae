"""clustkit plugin 'dchl' (work in progress)."""
