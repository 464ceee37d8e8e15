"""Models: the manifest resolved at run time (registry) and the build steps that fill its cache (build)."""
