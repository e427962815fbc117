"""Apache TVM's compile half: `compile` (ONNX -> Relax -> shared library), `device` (cross
linking, CUDA kernels compiled ahead of time), `tuning` (the CPU pipeline and MetaSchedule),
`onnx_rewrite` (graph rewrites for TVM's ONNX importer). Its run half is
`hypercompile.runtime.runners.tvm`."""
