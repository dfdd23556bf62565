"""Built-in recon plugins. Each sub-package is one entry point of the group `recon.plugins`."""
