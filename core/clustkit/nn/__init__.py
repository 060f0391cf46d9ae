"""Neural parts every method builds on: backbones, projection heads, augmentations and view
generators. ``configs`` holds their recipe models (pydantic only, importable without torch)."""
