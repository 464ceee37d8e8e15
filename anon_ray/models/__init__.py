"""Models: the manifest resolved at run time (registry), the build steps that fill its cache (build), and
the choice this CPU runs best (cpu)."""
