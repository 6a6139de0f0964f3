//! Log-mel spectrogram.
