//! Resampling to 16 kHz.
