"""Evaluation: speech quality metrics (`metrics`), the classical codecs ESC is compared with (`baselines`), figures
(`plotting`), the listening report (`report`), model cards (`model_card`) and paired comparisons of two
checkpoints on the same clips (`paired`). Imports the codec and model layers."""
