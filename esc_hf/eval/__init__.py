"""Evaluation: speech quality metrics (`metrics`), the classical codecs ESC is compared with (`baselines`), figures
(`plotting`), the listening report (`report`) and model cards (`model_card`). Imports the codec and model layers."""
