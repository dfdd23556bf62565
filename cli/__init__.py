"""The `recon` command line (click + rich)."""
