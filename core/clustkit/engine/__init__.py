"""The engine: build a run from a recipe (``build``), train it (``run``: the loop; ``step``: one
optimizer step), checkpoint it (``checkpoint``) and write its folder (``run_folder``).
Plugins never import from here: they use the names exported by ``clustkit`` (docs/api.md)."""
