"""Shared and torch-free: the host program IR, the bundle manifest schema, tensor files and
device targets. Both the build pipeline and the runtime stand on these."""
