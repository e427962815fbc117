"""Development-time tools over a built bundle: profiling (here or on a board through TVM RPC)
and plots. A device that only runs bundles never imports them."""
