"""Publishing edge bundles as a TUF repository of static files (keys, repository, CLI)."""
