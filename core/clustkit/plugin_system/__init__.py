"""The plugin system: the hooks (``hookspecs``), the component registry (``registry``) and the
discovery of plugins through entry points (``manager``). See docs/architecture.md."""
