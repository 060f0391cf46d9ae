"""Losses: the equations (``contrast``: NT-Xent, cluster contrast), the recipe models of the
contrast components (``configs``, no torch) and the components themselves (``pair``)."""
