"""ESC in transformers' layout: `configuration_esc`, `modeling_esc` (the paper's network), `inference_esc` (its fast
inference forms) and `feature_extraction_esc`. These four files are also the remote-code files that `save_pretrained`
copies beside a model's weights, so they import nothing of esc_hf (the CPU kernels only when they are the installed
package's own files). The public names are exported by `esc_hf` itself."""
