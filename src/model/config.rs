//! config.json.
