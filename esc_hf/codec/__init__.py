"""The codec around the model: loading the default or any model (`loading`), audio files (`audio_io`), the `.esc`
bitstream (`bitstream`), chunked and streaming coding (`streaming`), tokens for language models (`tokens`) and ONNX
(`onnx_export`, `onnx_runtime`). Imports the model layer only."""
