//! Decoding: search, Whisper's timestamp rules, fallback and long-form windows.
