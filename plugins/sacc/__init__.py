"""clustkit plugin 'sacc' (work in progress)."""
