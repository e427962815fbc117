"""TensorRT's compile half: `support` (what TensorRT 10.3's ONNX parser takes, checked offline),
`compile` (the recipe: how the device builds each graph's engine). Engines themselves are built
on the device by the run half, `hypercompile.runtime.runners.tensorrt`."""
