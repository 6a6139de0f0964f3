//! Audio file decoding.
