"""CTC acoustic models: units, encoders, distillation from a CTC teacher ensemble, decoding."""
