"""Results across runs: reading run directories, statistics over repeats, tables, figures, bundles."""
