"""Deploying a trained acoustic model: a self-contained model directory, transcription of audio
files, ONNX export (fp32, int8), sherpa-onnx export, and the quantisation gate and cost table."""
