"""The models: the lowest layer of esc_hf, importing nothing of it but the optional CPU kernels (`esc_hf.kernels`)."""
