"""Optional native code: the bf16 backbone's CPU kernels, built on first use. Nothing needs them; the model runs
aten's ops where they cannot be built."""
